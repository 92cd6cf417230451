//! Runs pipelines: source task → bounded channel → sink task.
//!
//! The source is polled in chunks of at most [`CHUNK`] records; the sink task
//! writes each chunk as it comes and commits every `delivery.batch_size`
//! records (or after `delivery.flush_interval`). A commit is: fsync the
//! dead-letter entries of the batch, have the sink make everything written
//! durable, and only then record the positions as committed — in the sink
//! itself for a transactional sink, else in the offset store. So the
//! committed position of every partition only ever moves past records that
//! are durable.
//!
//! A full batch's commit is *started* ([`Sink::start_commit`]) and the next
//! batch is written while it becomes durable; at most one commit is in
//! flight, commits settle in order, and positions move only when theirs
//! resolved. A sink that cannot overlap commits synchronously (the default).
//!
//! Memory is bounded by the chunks, not by the batch: at most
//! [`QUEUE_CHUNKS`] chunks wait in the channel and at most [`WRITE_MAX`]
//! records (the chunks that were waiting, taken together) are being written, so a
//! large `batch_size` (fewer, cheaper commits) costs no memory, and a slow
//! sink slows the source down instead of filling memory.
//!
//! Recovery is crash-only. When a write or a commit fails with a retriable
//! error the pipeline is torn down and started again from its last committed
//! positions after a backoff — exactly what happens after a `kill -9`, so the
//! path the crash tests prove is the path every failure takes. The sink opened
//! anew discards what it wrote after its last commit (transactional) or
//! overwrites it when the source replays it (idempotent).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_api::{
    BuildContext, ConnectorError, Flush, FlushRequest, FlushRequests, Flushed, Positions, Record,
    Sink, Source, SourceItem, Value,
};
use tokio::sync::{mpsc, watch};

use crate::config::{PipelineConfig, Tolerance};
use crate::dead_letter::DeadLetters;
use crate::offsets::{OffsetStore, OffsetStoreError};

/// Most records a source returns per poll, and so per sink write.
pub const CHUNK: usize = 1000;
/// Chunks that may wait between a source and its sink.
pub const QUEUE_CHUNKS: usize = 4;
/// The sink task takes up to this many waiting records into one write.
pub const WRITE_MAX: usize = QUEUE_CHUNKS * CHUNK;

/// Why a pipeline stopped before it was asked to.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("{stage}: {source}")]
    Connector {
        stage: &'static str,
        #[source]
        source: ConnectorError,
    },
    #[error(
        "bad record at {position} ({stage}): {error} (errors.tolerance is none: nothing from it on was committed)"
    )]
    BadRecord {
        stage: &'static str,
        position: String,
        error: String,
    },
    #[error("offset store: {0}")]
    Offsets(#[from] OffsetStoreError),
    #[error("the {task} task panicked: {message} (a bug in ferry: please report it)")]
    Panicked { task: &'static str, message: String },
}

impl PipelineError {
    fn connector(stage: &'static str, source: ConnectorError) -> Self {
        PipelineError::Connector { stage, source }
    }

    /// Worth starting the pipeline again from its committed positions: a
    /// connector's retriable error, and the offset store's I/O errors (a
    /// full disk is the same trouble whoever meets it); not a store file
    /// that is not one, nor a bad record, nor a panic.
    fn is_retriable(&self) -> bool {
        match self {
            PipelineError::Connector { source, .. } => source.is_retriable(),
            PipelineError::Offsets(OffsetStoreError::Io { .. }) => true,
            _ => false,
        }
    }

    /// What was being done, for the retry's log line.
    fn stage(&self) -> &'static str {
        match self {
            PipelineError::Connector { stage, .. } | PipelineError::BadRecord { stage, .. } => {
                stage
            }
            PipelineError::Offsets(_) => "the offset store",
            PipelineError::Panicked { task, .. } => task,
        }
    }
}

/// Counters of one pipeline, read by the progress reporter.
#[derive(Debug, Default)]
pub struct Stats {
    /// Read for the first time in this run.
    pub records_in: AtomicU64,
    /// Read again after a restart (what the failed attempt had read but
    /// not committed): apart from `records_in`, so that it tells the truth.
    pub replayed: AtomicU64,
    pub records_out: AtomicU64,
    pub dead_lettered: AtomicU64,
    /// The runtime's restarts and the connectors' own retries
    /// ([`ferry_api::Retries`]).
    pub retries: Arc<AtomicU64>,
    // A std mutex: held only to swap a short string, never across an await.
    committed: Mutex<String>,
}

impl Stats {
    pub fn committed(&self) -> String {
        self.committed.lock().expect("not poisoned").clone()
    }

    fn set_committed(&self, positions: &Positions) {
        let mut descs: Vec<String> = positions.iter().map(|p| p.describe()).collect();
        let text = match descs.len() {
            0 => "nothing yet".to_string(),
            1..=2 => descs.join(", "),
            n => {
                descs.truncate(2);
                format!("{} and {} more", descs.join(", "), n - 2)
            }
        };
        *self.committed.lock().expect("not poisoned") = text;
    }
}

/// Exponential backoff with jitter that gives up when ferry is stopping.
struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
    stop: watch::Receiver<bool>,
    pipeline: String,
}

impl Backoff {
    fn new(first: Duration, max: Duration, stop: watch::Receiver<bool>, pipeline: &str) -> Backoff {
        Backoff {
            first,
            max,
            next: first,
            stop,
            pipeline: pipeline.to_string(),
        }
    }

    /// Reports the failure and waits. False: ferry is stopping, give up.
    async fn wait(&mut self, error: &PipelineError, stats: &Stats) -> bool {
        let what = error.stage();
        // The connector's own words: the stage is said apart.
        let error = match error {
            PipelineError::Connector { source, .. } => source.to_string(),
            other => other.to_string(),
        };
        if *self.stop.borrow() {
            // Cut short by the stop itself (a write that stopped waiting for
            // its server): not a failure to retry.
            tracing::info!(pipeline = %self.pipeline, error = %error, "{what} ended by the stop");
            return false;
        }
        stats.retries.fetch_add(1, Ordering::Relaxed);
        // Full jitter on the upper half: many pipelines hitting one server
        // do not retry in lockstep.
        let delay = self.next.mul_f64(0.5 + fastrand::f64() / 2.0);
        tracing::warn!(
            pipeline = %self.pipeline,
            error = %error,
            retry_in = ?delay,
            "{what} failed; starting again from the committed positions"
        );
        self.next = (self.next * 2).min(self.max);
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = self.stop.wait_for(|s| *s) => false,
        }
    }

    fn reset(&mut self) {
        self.next = self.first;
    }
}

/// What a pipeline needs from the process around it.
pub struct PipelineEnv {
    pub data_dir: PathBuf,
    pub store: OffsetStore,
    pub stats: Arc<Stats>,
    pub stop: watch::Receiver<bool>,
    /// Stop by itself once the source has nothing more to read.
    pub once: bool,
}

/// Runs one pipeline until it is stopped (Ok) or fails for good (Err).
/// Retriable failures start it again from its committed positions.
pub async fn run_pipeline(p: Arc<PipelineConfig>, env: PipelineEnv) -> Result<(), PipelineError> {
    let mut backoff = Backoff::new(
        p.errors.retry_backoff,
        p.errors.retry_backoff_max,
        env.stop.clone(),
        &p.name,
    );
    // Items the last attempt read but did not commit: the next one reads
    // them again first.
    let mut replays = 0u64;
    loop {
        match run_attempt(&p, &env, &mut backoff, &mut replays).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_retriable() => {
                if !backoff.wait(&e, &env.stats).await {
                    return Ok(());
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// One life of a pipeline: open the sink, find the committed positions, open
/// the source there, move records until the source ends, ferry stops, or
/// something fails.
///
/// `replays`: how many of the first items read are a replay of what the
/// attempt before read but did not commit; set, at the end, to what this one
/// read but did not commit. (A count, not positions: sources replay in the
/// order they read, and positions need not be comparable.)
///
/// Whatever was built is closed, however the attempt ends: the sink once it
/// was built (even if its `open` failed), the source once it was built.
async fn run_attempt(
    p: &PipelineConfig,
    env: &PipelineEnv,
    backoff: &mut Backoff,
    replays: &mut u64,
) -> Result<(), PipelineError> {
    let ctx = build_context(p, env);
    let mut sink = p
        .sink
        .build(&ctx)
        .await
        .map_err(|e| PipelineError::connector("opening the sink", e))?;
    let result = with_sink(p, env, backoff, replays, &ctx, &mut *sink).await;
    sink.close().await;
    result
}

fn build_context(p: &PipelineConfig, env: &PipelineEnv) -> BuildContext {
    let mut writes: Vec<PathBuf> = p.sink.local_outputs().into_iter().map(|(_, f)| f).collect();
    writes.push(p.dead_letter_path(&env.data_dir));
    BuildContext {
        pipeline: p.name.clone(),
        data_dir: env.data_dir.clone(),
        once: env.once,
        stopping: ferry_api::Stopping::new(env.stop.clone()),
        writes,
        retries: ferry_api::Retries::new(env.stats.retries.clone()),
    }
}

/// Where an attempt starts, and who holds the truth of it.
struct Resume {
    positions: Positions,
    /// The sink keeps the positions with its data (the store mirrors them).
    kept_by_sink: bool,
    /// The store still says "reset": its first save must be durable.
    reset_pending: bool,
}

/// The committed positions: the sink's when it keeps them, else the
/// store's; nothing after `ferry offsets reset`.
fn resume_positions(
    p: &PipelineConfig,
    env: &PipelineEnv,
    from_sink: Option<Positions>,
) -> Result<Resume, PipelineError> {
    let stored = env.store.load(&p.name)?;
    let reset_pending = stored.as_ref().is_some_and(|s| s.reset);
    let kept_by_sink = from_sink.is_some();
    let positions = match (stored, from_sink) {
        _ if reset_pending => {
            tracing::info!(pipeline = %p.name, "offsets were reset: starting from the beginning of the source");
            Positions::new()
        }
        (_, Some(from_sink)) => from_sink,
        (Some(s), None) => s.positions,
        (None, None) => Positions::new(),
    };
    Ok(Resume {
        positions,
        kept_by_sink,
        reset_pending,
    })
}

/// The attempt once its sink is built: the sink is closed by the caller.
async fn with_sink(
    p: &PipelineConfig,
    env: &PipelineEnv,
    backoff: &mut Backoff,
    replays: &mut u64,
    ctx: &BuildContext,
    sink: &mut dyn Sink,
) -> Result<(), PipelineError> {
    let from_sink = sink
        .open()
        .await
        .map_err(|e| PipelineError::connector("opening the sink", e))?;
    let resume = resume_positions(p, env, from_sink)?;
    env.stats.set_committed(&resume.positions);
    let mut source = p
        .source
        .build(ctx)
        .await
        .map_err(|e| PipelineError::connector("opening the source", e))?;
    let (flush, flush_requests) = Flush::channel();
    source.attach_flush(flush);
    if let Err(e) = source.open(&resume.positions).await {
        source.close().await;
        return Err(PipelineError::connector("opening the source", e));
    }
    tracing::info!(
        pipeline = %p.name,
        source = %p.source.describe(),
        sink = %p.sink.describe(),
        resume = %env.stats.committed(),
        "pipeline started"
    );
    move_records(
        p,
        env,
        backoff,
        replays,
        sink,
        source,
        flush_requests,
        resume,
    )
    .await
}

/// The source task and the writer, until the source ends, ferry stops, or
/// either fails; then the source's last acknowledgement and its `close`.
#[allow(clippy::too_many_arguments)]
async fn move_records(
    p: &PipelineConfig,
    env: &PipelineEnv,
    backoff: &mut Backoff,
    replays: &mut u64,
    sink: &mut dyn Sink,
    source: Box<dyn Source>,
    flush_requests: FlushRequests,
    resume: Resume,
) -> Result<(), PipelineError> {
    let stats = &env.stats;
    let (tx, rx) = mpsc::channel(QUEUE_CHUNKS);
    let (commits_tx, commits_rx) = watch::channel(resume.positions.clone());
    let reader = tokio::spawn(read_loop(
        source,
        tx,
        commits_rx,
        env.stop.clone(),
        stats.clone(),
        p.delivery.batch_size.min(CHUNK),
        env.once,
        *replays,
    ));
    let mut writer = Writer {
        p,
        sink,
        store: &env.store,
        dead_letters: DeadLetters::new(p.dead_letter_path(&env.data_dir), &p.name),
        open: Open {
            positions: resume.positions,
            ..Open::default()
        },
        kept_by_sink: resume.kept_by_sink,
        reset_pending: resume.reset_pending,
        stats,
        backoff,
        commits: commits_tx,
        in_flight: None,
        committed_items: 0,
    };
    // The flush requests go with the writer: a source asking for a flush
    // once it is gone (leaving its group in `close`) learns so at once.
    let written = writer.run(Inbox { rx, received: 0 }, flush_requests).await;
    let committed = writer.commits.borrow().clone();
    let committed_items = writer.committed_items;
    drop(writer);
    // The writer dropped the channel: the reader stops at its next turn.
    let (read, source) = match reader.await {
        Ok((result, source, read)) => {
            *replays = read.saturating_sub(committed_items);
            (result, Some(source))
        }
        // The source went down with its task: it cannot be closed.
        Err(e) => {
            let message = crate::join_error_message(e);
            (
                Err(PipelineError::Panicked {
                    task: "source",
                    message,
                }),
                None,
            )
        }
    };
    if let Some(mut source) = source {
        if written.is_ok()
            && let Err(e) = source.committed(&committed).await
        {
            tracing::warn!(pipeline = %p.name, error = %e, "source could not acknowledge the last commit");
        }
        source.close().await;
    }
    written.and(read)
}

/// Returns, with the source, how many items it read.
#[allow(clippy::too_many_arguments)]
async fn read_loop(
    mut source: Box<dyn Source>,
    tx: mpsc::Sender<Vec<SourceItem>>,
    mut commits: watch::Receiver<Positions>,
    mut stop: watch::Receiver<bool>,
    stats: Arc<Stats>,
    max: usize,
    once: bool,
    mut replays: u64,
) -> (Result<(), PipelineError>, Box<dyn Source>, u64) {
    let mut read = 0u64;
    let result = loop {
        // The writer gone (it failed, or the source ended) is as good as a
        // stop. Checked every turn, not only when a send fails: a source at
        // its end never sends again, and the restart waits for this task.
        if *stop.borrow() || tx.is_closed() {
            break Ok(());
        }
        if commits.has_changed().unwrap_or(false) {
            let positions = commits.borrow_and_update().clone();
            if let Err(e) = source.committed(&positions).await {
                tracing::warn!(error = %e, "source could not acknowledge a commit");
            }
        }
        // A poll may wait (a file source's poll interval, a server that does
        // not answer): shutdown does not wait for it. Dropping a poll loses
        // nothing: what it read is not committed, so the next start reads
        // it again.
        let polled = tokio::select! {
            polled = source.poll(max) => polled,
            _ = stop.wait_for(|s| *s) => break Ok(()),
        };
        let items = match polled {
            Ok(items) => items,
            Err(e) => break Err(PipelineError::connector("reading the source", e)),
        };
        if items.is_empty() {
            if once && source.idle() {
                break Ok(());
            }
            continue;
        }
        let n = items.len() as u64;
        read += n;
        let again = n.min(replays);
        replays -= again;
        stats.replayed.fetch_add(again, Ordering::Relaxed);
        stats.records_in.fetch_add(n - again, Ordering::Relaxed);
        tokio::select! {
            sent = tx.send(items) => if sent.is_err() { break Ok(()) },
            _ = stop.wait_for(|s| *s) => break Ok(()),
        }
    };
    (result, source, read)
}

/// What has been written since the last commit.
#[derive(Default)]
struct Open {
    /// Committed positions advanced past every item written since.
    positions: Positions,
    items: usize,
    records_out: u64,
    dead: Vec<Value>,
    /// When the first item since the last commit arrived.
    since: Option<Instant>,
}

struct Writer<'a> {
    p: &'a PipelineConfig,
    sink: &'a mut dyn Sink,
    store: &'a OffsetStore,
    dead_letters: DeadLetters,
    /// Since the last commit; `positions` starts as the committed ones.
    open: Open,
    kept_by_sink: bool,
    /// The store still says "reset": its first save must be durable.
    reset_pending: bool,
    stats: &'a Stats,
    backoff: &'a mut Backoff,
    /// The committed positions, watched by the source task.
    commits: watch::Sender<Positions>,
    /// A commit the sink has started but not yet made durable (at most
    /// one), with what becomes committed when it resolves.
    in_flight: Option<InFlight>,
    /// Items committed in this attempt.
    committed_items: u64,
}

/// The writer's end of the source's channel, counting the items received
/// in this attempt: a flush has everything the source handed over once
/// that count reaches [`FlushRequest::handed`].
struct Inbox {
    rx: mpsc::Receiver<Vec<SourceItem>>,
    received: u64,
}

impl Inbox {
    async fn recv(&mut self) -> Option<Vec<SourceItem>> {
        let items = self.rx.recv().await?;
        self.received += items.len() as u64;
        Some(items)
    }

    /// A chunk already waiting, if any.
    fn try_recv(&mut self) -> Option<Vec<SourceItem>> {
        let items = self.rx.try_recv().ok()?;
        self.received += items.len() as u64;
        Some(items)
    }
}

struct InFlight {
    durable: tokio::task::JoinHandle<Result<(), ConnectorError>>,
    open: Open,
}

/// What the writer waits for next.
enum Next {
    Items(Option<Vec<SourceItem>>),
    FlushDue,
    Durable(Result<Result<(), ConnectorError>, tokio::task::JoinError>),
    Flush(Option<FlushRequest>),
}

impl Writer<'_> {
    async fn run(&mut self, rx: Inbox, flushes: FlushRequests) -> Result<(), PipelineError> {
        let result = self.run_inner(rx, flushes).await;
        // A commit still in flight must settle before this attempt ends: a
        // restart reads the positions back from the sink, and a commit
        // landing after that read would make its records replay. If it
        // made its records durable, its positions move (and are counted)
        // even though the attempt is failing.
        if let Some(f) = self.in_flight.take() {
            let settled = f.durable.await;
            if let Err(e) = self.durable(f.open, settled).await
                && result.is_ok()
            {
                return Err(e);
            }
        }
        result
    }

    async fn run_inner(
        &mut self,
        mut rx: Inbox,
        mut flushes: FlushRequests,
    ) -> Result<(), PipelineError> {
        let mut flushes_open = true;
        loop {
            let due = self
                .open
                .since
                .map(|since| since + self.p.delivery.flush_interval);
            let durable = async {
                match self.in_flight.as_mut() {
                    Some(f) => (&mut f.durable).await,
                    None => std::future::pending().await,
                }
            };
            let next = tokio::select! {
                items = rx.recv() => Next::Items(items),
                _ = async {
                    match due {
                        Some(due) => tokio::time::sleep_until(due.into()).await,
                        None => std::future::pending().await,
                    }
                } => Next::FlushDue,
                result = durable => Next::Durable(result),
                request = flushes.recv(), if flushes_open => Next::Flush(request),
            };
            match next {
                Next::FlushDue => self.commit().await?,
                Next::Flush(None) => flushes_open = false,
                Next::Flush(Some(request)) => {
                    // Everything the source handed over: what is queued,
                    // and what its polls returned that is still on its way
                    // (the read task sends it: it does not wait on the
                    // source for that). An error drops the request: the
                    // source learns nothing was promised.
                    let mut items = Vec::new();
                    while let Some(more) = rx.try_recv() {
                        items.extend(more);
                    }
                    while rx.received < request.handed {
                        match rx.recv().await {
                            Some(more) => items.extend(more),
                            None => {
                                request.reply(Err("the source stopped".into()));
                                return self.commit().await;
                            }
                        }
                    }
                    if !items.is_empty() {
                        self.write(items).await?;
                    }
                    self.commit().await?;
                    let shared =
                        self.sink.shared_positions().await.map_err(|e| {
                            PipelineError::connector("reading the sink's positions", e)
                        })?;
                    tracing::debug!(pipeline = %self.p.name, "flushed for the source");
                    request.reply(Ok(Flushed {
                        committed: self.commits.borrow().clone(),
                        shared,
                    }));
                }
                Next::Durable(result) => {
                    let f = self.in_flight.take().expect("was in flight");
                    self.durable(f.open, result).await?;
                }
                // The source stopped: commit what was written, then end.
                Next::Items(None) => return self.commit().await,
                Next::Items(Some(mut items)) => {
                    // A backlog is written in fewer, larger writes: every
                    // write costs the sink round trips (a savepoint, a COPY),
                    // whatever its size. Only chunks already waiting are
                    // taken, so a quiet stream is not delayed.
                    while items.len() < WRITE_MAX {
                        match rx.try_recv() {
                            Some(more) => items.extend(more),
                            None => break,
                        }
                    }
                    self.write(items).await?;
                    if self.open.items >= self.p.delivery.batch_size {
                        // The next batch is written while this one is made
                        // durable.
                        self.start_commit().await?;
                    }
                }
            }
        }
    }

    /// Writes one chunk. With `tolerance: none` a bad item commits what came
    /// before it and stops the pipeline.
    async fn write(&mut self, mut items: Vec<SourceItem>) -> Result<(), PipelineError> {
        let bad_at = match self.p.errors.tolerance {
            Tolerance::None => items
                .iter()
                .position(|it| matches!(it, SourceItem::Invalid(_))),
            Tolerance::All => None,
        };
        let bad = bad_at.and_then(|i| items.drain(i..).next());
        self.open.since.get_or_insert_with(Instant::now);
        self.open.items += items.len();
        self.open
            .positions
            .advance_all(items.iter().map(SourceItem::position));
        let mut records: Vec<Record> = Vec::with_capacity(items.len());
        for item in items {
            match item {
                SourceItem::Record(r) => records.push(r),
                SourceItem::Invalid(i) => self.open.dead.push(self.dead_letters.invalid(&i)),
            }
        }
        let mut rejected = self
            .sink
            .write(&records)
            .await
            .map_err(|e| PipelineError::connector("writing to the sink", e))?;
        // The indices come from the connector (and may come from a server's
        // answer): in order, each once, and inside the batch.
        rejected.sort_by_key(|r| r.index);
        rejected.dedup_by_key(|r| r.index);
        if let Some(r) = rejected.iter().find(|r| r.index >= records.len()) {
            return Err(PipelineError::connector(
                "writing to the sink",
                ConnectorError::Fatal(format!(
                    "the sink reported record {} of a batch of {} as refused (a bug in the connector)",
                    r.index,
                    records.len()
                )),
            ));
        }
        if let Some(first) = rejected.first()
            && self.p.errors.tolerance == Tolerance::None
        {
            // Nothing of this batch is committed: it replays up to the bad record next time.
            return Err(PipelineError::BadRecord {
                stage: "sink",
                position: records[first.index].position.describe(),
                error: first.error.to_string(),
            });
        }
        for r in &rejected {
            self.open
                .dead
                .push(self.dead_letters.rejected(&records[r.index], &r.error));
        }
        self.open.records_out += (records.len() - rejected.len()) as u64;
        if let Some(SourceItem::Invalid(bad)) = bad {
            self.commit().await?;
            return Err(PipelineError::BadRecord {
                stage: "source",
                position: bad.position.describe(),
                error: bad.error,
            });
        }
        Ok(())
    }

    /// Makes everything written since the last commit durable, then moves
    /// the committed positions.
    async fn commit(&mut self) -> Result<(), PipelineError> {
        self.start_commit().await?;
        self.settle().await
    }

    /// Waits for the commit in flight, if any, and moves the positions.
    async fn settle(&mut self) -> Result<(), PipelineError> {
        match self.in_flight.take() {
            Some(f) => {
                let result = f.durable.await;
                self.durable(f.open, result).await
            }
            None => Ok(()),
        }
    }

    /// Starts making everything written since the last commit durable,
    /// after the previous commit settled: commits land in order.
    async fn start_commit(&mut self) -> Result<(), PipelineError> {
        self.settle().await?;
        if self.open.items == 0 {
            self.open.since = None;
            return Ok(());
        }
        if !self.open.dead.is_empty() {
            self.dead_letters
                .append(&self.open.dead)
                .await
                .map_err(|e| PipelineError::connector("writing the dead-letter file", e))?;
        }
        let pending = self
            .sink
            .start_commit(&self.open.positions)
            .await
            .map_err(|e| PipelineError::connector("committing to the sink", e))?;
        let open = std::mem::take(&mut self.open);
        self.open.positions = open.positions.clone();
        self.in_flight = Some(InFlight {
            durable: tokio::spawn(pending),
            open,
        });
        Ok(())
    }

    /// A commit resolved. If it is durable, now, and only now, its positions
    /// move. The offset store's write (an fsync when it holds the truth)
    /// runs on a blocking thread, not on the async workers.
    async fn durable(
        &mut self,
        open: Open,
        result: Result<Result<(), ConnectorError>, tokio::task::JoinError>,
    ) -> Result<(), PipelineError> {
        result
            .map_err(|e| {
                PipelineError::connector(
                    "committing to the sink",
                    ConnectorError::Fatal(format!("the commit task failed: {e}")),
                )
            })?
            .map_err(|e| PipelineError::connector("committing to the sink", e))?;
        let (store, name, positions) = (
            self.store.clone(),
            self.p.name.clone(),
            open.positions.clone(),
        );
        let (kept_by_sink, durable) = (self.kept_by_sink, self.reset_pending);
        let saved = tokio::task::spawn_blocking(move || {
            store.save(&name, &positions, kept_by_sink, durable)
        })
        .await
        .map_err(|e| PipelineError::Panicked {
            task: "offset store",
            message: crate::join_error_message(e),
        })?;
        match saved {
            Ok(()) => self.reset_pending = false,
            Err(e) if self.kept_by_sink => {
                tracing::warn!(pipeline = %self.p.name, error = %e, "could not mirror offsets")
            }
            Err(e) => return Err(e.into()),
        }
        self.committed_items += open.items as u64;
        self.stats
            .records_out
            .fetch_add(open.records_out, Ordering::Relaxed);
        self.stats
            .dead_lettered
            .fetch_add(open.dead.len() as u64, Ordering::Relaxed);
        self.stats.set_committed(&open.positions);
        self.commits.send_replace(open.positions);
        self.backoff.reset();
        Ok(())
    }
}

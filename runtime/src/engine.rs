//! Runs pipelines: source task → bounded channel → sink task, in batches.
//!
//! The sink task owns delivery. For each batch it writes the records, sends
//! what could not be delivered to the dead-letter file (or stops, with
//! `tolerance: none`), asks the sink to commit, and only then records the
//! batch's positions as committed: in the sink itself for a transactional
//! sink, else in the offset store. Batches are committed strictly in order,
//! one at a time, so the committed position of every partition only ever
//! moves past records that are durable.
//!
//! Memory is bounded by the channel: at most [`QUEUE_BATCHES`] batches wait
//! between the source and the sink, plus the batch being written. A slow sink
//! therefore slows the source down instead of filling memory.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_api::{BuildContext, ConnectorError, Positions, Sink, Source, SourceItem, Value};
use tokio::sync::{mpsc, watch};

use crate::config::{PipelineConfig, Tolerance};
use crate::dead_letter::DeadLetters;
use crate::offsets::{OffsetStore, OffsetStoreError};

/// Batches that may wait between a source and its sink.
pub const QUEUE_BATCHES: usize = 4;

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
        "bad record at {position} ({stage}): {error} (errors.tolerance is none: nothing after it was committed)"
    )]
    BadRecord {
        stage: &'static str,
        position: String,
        error: String,
    },
    #[error("offset store: {0}")]
    Offsets(#[from] OffsetStoreError),
    #[error("the {0} task panicked")]
    Panicked(&'static str),
}

/// Counters of one pipeline, read by the progress reporter.
#[derive(Debug, Default)]
pub struct Stats {
    pub records_in: AtomicU64,
    pub records_out: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub retries: AtomicU64,
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
    async fn wait(&mut self, what: &str, error: &ConnectorError, stats: &Stats) -> bool {
        stats.retries.fetch_add(1, Ordering::Relaxed);
        // Full jitter on the upper half: many pipelines hitting one server
        // do not retry in lockstep.
        let delay = self.next.mul_f64(0.5 + fastrand::f64() / 2.0);
        tracing::warn!(pipeline = %self.pipeline, error = %error, retry_in = ?delay, "{what} failed; retrying");
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

/// Runs one pipeline until it is stopped (Ok) or fails (Err).
pub async fn run_pipeline(p: Arc<PipelineConfig>, env: PipelineEnv) -> Result<(), PipelineError> {
    let ctx = BuildContext {
        pipeline: p.name.clone(),
        data_dir: env.data_dir.clone(),
    };
    let stats = env.stats.clone();
    let mut backoff = Backoff::new(
        p.errors.retry_backoff,
        p.errors.retry_backoff_max,
        env.stop.clone(),
        &p.name,
    );

    let (mut sink, sink_positions) = loop {
        let attempt = async {
            let mut sink = p.sink.build(&ctx).await?;
            let positions = sink.open().await?;
            Ok::<_, ConnectorError>((sink, positions))
        };
        match attempt.await {
            Ok(v) => break v,
            Err(e) if e.is_retriable() => {
                if !backoff.wait("opening the sink", &e, &stats).await {
                    return Ok(());
                }
            }
            Err(e) => {
                return Err(PipelineError::Connector {
                    stage: "opening the sink",
                    source: e,
                });
            }
        }
    };
    backoff.reset();

    let stored = env.store.load(&p.name)?;
    let kept_by_sink = sink_positions.is_some();
    let positions = match (stored, sink_positions) {
        (Some(s), _) if s.reset => {
            tracing::info!(pipeline = %p.name, "offsets were reset: starting from the beginning of the source");
            Positions::new()
        }
        (_, Some(from_sink)) => from_sink,
        (Some(s), None) => s.positions,
        (None, None) => Positions::new(),
    };
    stats.set_committed(&positions);

    let source = loop {
        let attempt = async {
            let mut source = p.source.build(&ctx).await?;
            source.open(&positions).await?;
            Ok::<_, ConnectorError>(source)
        };
        match attempt.await {
            Ok(s) => break s,
            Err(e) if e.is_retriable() => {
                if !backoff.wait("opening the source", &e, &stats).await {
                    return Ok(());
                }
            }
            Err(e) => {
                return Err(PipelineError::Connector {
                    stage: "opening the source",
                    source: e,
                });
            }
        }
    };
    backoff.reset();
    tracing::info!(
        pipeline = %p.name,
        source = %p.source.describe(),
        sink = %p.sink.describe(),
        resume = %stats.committed(),
        "pipeline started"
    );

    let (tx, rx) = mpsc::channel(QUEUE_BATCHES);
    let (commits_tx, commits_rx) = watch::channel(positions.clone());
    let reader = tokio::spawn(read_loop(
        source,
        tx,
        commits_rx,
        Backoff::new(
            p.errors.retry_backoff,
            p.errors.retry_backoff_max,
            env.stop.clone(),
            &p.name,
        ),
        stats.clone(),
        p.delivery.batch_size,
        env.once,
    ));
    let dead_letter_path = p
        .errors
        .dead_letter
        .clone()
        .unwrap_or_else(|| env.data_dir.join("dlq").join(format!("{}.jsonl", p.name)));
    let mut writer = Writer {
        p: &p,
        sink: &mut *sink,
        store: &env.store,
        dead_letters: DeadLetters::new(dead_letter_path, &p.name),
        committed: positions,
        kept_by_sink,
        stats: &stats,
        backoff,
        commits: commits_tx,
    };
    let written = writer.run(rx).await;
    let committed = writer.committed.clone();
    // The writer dropped the channel: the reader stops at its next send.
    let (read, source) = match reader.await {
        Ok((result, source)) => (result, Some(source)),
        Err(_) => (Err(PipelineError::Panicked("source")), None),
    };
    if let Some(mut source) = source {
        if let Err(e) = source.committed(&committed).await {
            tracing::warn!(pipeline = %p.name, error = %e, "source could not acknowledge the last commit");
        }
        source.close().await;
    }
    sink.close().await;
    match written {
        Err(Stop::Stopped) => Ok(()),
        Err(Stop::Failed(e)) => Err(e),
        Ok(()) => read,
    }
}

async fn read_loop(
    mut source: Box<dyn Source>,
    tx: mpsc::Sender<Vec<SourceItem>>,
    mut commits: watch::Receiver<Positions>,
    mut backoff: Backoff,
    stats: Arc<Stats>,
    max: usize,
    once: bool,
) -> (Result<(), PipelineError>, Box<dyn Source>) {
    let mut stop = backoff.stop.clone();
    let result = loop {
        if *stop.borrow() {
            break Ok(());
        }
        if commits.has_changed().unwrap_or(false) {
            let positions = commits.borrow_and_update().clone();
            if let Err(e) = source.committed(&positions).await {
                tracing::warn!(pipeline = %backoff.pipeline, error = %e, "source could not acknowledge a commit");
            }
        }
        let items = match source.poll(max).await {
            Ok(items) => {
                backoff.reset();
                items
            }
            Err(e) if e.is_retriable() => {
                if !backoff.wait("reading the source", &e, &stats).await {
                    break Ok(());
                }
                continue;
            }
            Err(e) => {
                break Err(PipelineError::Connector {
                    stage: "reading the source",
                    source: e,
                });
            }
        };
        if items.is_empty() {
            if once {
                break Ok(());
            }
            continue;
        }
        stats
            .records_in
            .fetch_add(items.len() as u64, Ordering::Relaxed);
        tokio::select! {
            sent = tx.send(items) => if sent.is_err() { break Ok(()) },
            _ = stop.wait_for(|s| *s) => break Ok(()),
        }
    };
    (result, source)
}

/// How the writer ended early.
enum Stop {
    /// ferry is stopping while a retry was pending: nothing more is committed.
    Stopped,
    Failed(PipelineError),
}

impl From<PipelineError> for Stop {
    fn from(e: PipelineError) -> Self {
        Stop::Failed(e)
    }
}

impl From<OffsetStoreError> for Stop {
    fn from(e: OffsetStoreError) -> Self {
        Stop::Failed(e.into())
    }
}

struct Writer<'a> {
    p: &'a PipelineConfig,
    sink: &'a mut dyn Sink,
    store: &'a OffsetStore,
    dead_letters: DeadLetters,
    committed: Positions,
    kept_by_sink: bool,
    stats: &'a Stats,
    backoff: Backoff,
    commits: watch::Sender<Positions>,
}

enum Next {
    Items(Option<Vec<SourceItem>>),
    FlushDue,
}

impl Writer<'_> {
    async fn run(&mut self, mut rx: mpsc::Receiver<Vec<SourceItem>>) -> Result<(), Stop> {
        let batch_size = self.p.delivery.batch_size;
        let mut pending: Vec<SourceItem> = Vec::new();
        let mut due = Instant::now();
        loop {
            let next = if pending.is_empty() {
                Next::Items(rx.recv().await)
            } else {
                tokio::select! {
                    items = rx.recv() => Next::Items(items),
                    _ = tokio::time::sleep_until(due.into()) => Next::FlushDue,
                }
            };
            match next {
                Next::FlushDue => self.commit_batch(std::mem::take(&mut pending)).await?,
                // The source stopped: commit what is here, then end.
                Next::Items(None) => return self.commit_batch(pending).await,
                Next::Items(Some(items)) => {
                    if pending.is_empty() {
                        due = Instant::now() + self.p.delivery.flush_interval;
                    }
                    pending.extend(items);
                    while pending.len() >= batch_size {
                        let rest = pending.split_off(batch_size);
                        self.commit_batch(std::mem::replace(&mut pending, rest))
                            .await?;
                        due = Instant::now() + self.p.delivery.flush_interval;
                    }
                }
            }
        }
    }

    async fn commit_batch(&mut self, mut items: Vec<SourceItem>) -> Result<(), Stop> {
        if self.p.errors.tolerance == Tolerance::None
            && let Some(i) = items
                .iter()
                .position(|it| matches!(it, SourceItem::Invalid(_)))
        {
            // Deliver what came before the bad item, then stop at it.
            let bad = items.drain(i..).next();
            self.deliver(items).await?;
            let Some(SourceItem::Invalid(bad)) = bad else {
                unreachable!("found above")
            };
            return Err(Stop::Failed(PipelineError::BadRecord {
                stage: "source",
                position: bad.position.describe(),
                error: bad.error,
            }));
        }
        self.deliver(items).await
    }

    /// Writes and commits one batch, retrying retriable failures.
    async fn deliver(&mut self, items: Vec<SourceItem>) -> Result<(), Stop> {
        if items.is_empty() {
            return Ok(());
        }
        let mut next = self.committed.clone();
        let mut records = Vec::with_capacity(items.len());
        let mut dead = Vec::new();
        for item in items {
            next.advance(item.position());
            match item {
                SourceItem::Record(r) => records.push(r),
                SourceItem::Invalid(i) => dead.push(self.dead_letters.invalid(&i)),
            }
        }
        let mut dead_written = false;
        let rejected = loop {
            match self
                .attempt(&records, &dead, &next, &mut dead_written)
                .await
            {
                Ok(n) => break n,
                Err(Attempt::Bad(e)) => return Err(Stop::Failed(e)),
                Err(Attempt::Connector(e)) if e.is_retriable() => {
                    if !self
                        .backoff
                        .wait("writing to the sink", &e, self.stats)
                        .await
                    {
                        return Err(Stop::Stopped);
                    }
                }
                Err(Attempt::Connector(e)) => {
                    return Err(Stop::Failed(PipelineError::Connector {
                        stage: "writing to the sink",
                        source: e,
                    }));
                }
            }
        };
        self.backoff.reset();
        // The sink made the batch durable: now, and only now, the positions move.
        match self.store.save(&self.p.name, &next, self.kept_by_sink) {
            Ok(()) => {}
            Err(e) if self.kept_by_sink => {
                tracing::warn!(pipeline = %self.p.name, error = %e, "could not mirror offsets")
            }
            Err(e) => return Err(e.into()),
        }
        let dead_lettered = dead.len() + rejected;
        self.stats
            .records_out
            .fetch_add((records.len() - rejected) as u64, Ordering::Relaxed);
        self.stats
            .dead_lettered
            .fetch_add(dead_lettered as u64, Ordering::Relaxed);
        self.stats.set_committed(&next);
        self.committed = next;
        self.commits.send_replace(self.committed.clone());
        Ok(())
    }

    /// One try: write, dead-letter refusals, commit. Returns how many records the sink refused.
    async fn attempt(
        &mut self,
        records: &[ferry_api::Record],
        dead: &[Value],
        next: &Positions,
        dead_written: &mut bool,
    ) -> Result<usize, Attempt> {
        let rejected = self.sink.write(records).await?;
        if let Some(first) = rejected.first()
            && self.p.errors.tolerance == Tolerance::None
        {
            return Err(Attempt::Bad(PipelineError::BadRecord {
                stage: "sink",
                position: records[first.index].position.describe(),
                error: first.error.to_string(),
            }));
        }
        if !*dead_written && (!dead.is_empty() || !rejected.is_empty()) {
            let mut entries = dead.to_vec();
            entries.extend(
                rejected
                    .iter()
                    .map(|r| self.dead_letters.rejected(&records[r.index], &r.error)),
            );
            self.dead_letters.append(&entries).await?;
            *dead_written = true;
        }
        self.sink.commit(next).await?;
        Ok(rejected.len())
    }
}

enum Attempt {
    Connector(ConnectorError),
    Bad(PipelineError),
}

impl From<ConnectorError> for Attempt {
    fn from(e: ConnectorError) -> Self {
        Attempt::Connector(e)
    }
}

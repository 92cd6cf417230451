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

//!
//! Files by job: `reader.rs` (the source task), `writer.rs` (writes,
//! tolerance, commits and their settling), `stats.rs`; this file owns one
//! attempt of a pipeline: what it opens, runs and closes. Whether and when
//! to try again is the [`crate::supervisor`]'s.

mod reader;
mod resume;
mod stats;
mod writer;

use std::path::PathBuf;
use std::sync::Arc;

use ferry_api::runtime_end::FlushRequests;
use ferry_api::{BuildContext, ConnectorError, Record, Sink, Source, SourceContext};
use tokio::sync::{mpsc, watch};

use crate::config::PipelineConfig;
use crate::dead_letter::DeadLetters;
use crate::offsets::{OffsetStore, OffsetStoreError};
use reader::read_loop;
use resume::{Resume, resume_positions};
pub use stats::{Rate, Sample, Stats};
use writer::{FromSource, Uncommitted, Writer};

/// What the source task hands the writer: what the source read, through
/// the pipeline's transforms.
pub(super) enum Item {
    Record(Record),
    /// Input the source could not parse.
    Invalid(ferry_api::Invalid),
    /// A record a transform failed on, as the source gave it.
    Failed(Record, crate::transform::Failure),
    /// A record a filter dropped: its position moves all the same.
    Dropped(ferry_api::Position),
}

impl Item {
    fn position(&self) -> &ferry_api::Position {
        match self {
            Item::Record(r) | Item::Failed(r, _) => &r.position,
            Item::Invalid(i) => &i.position,
            Item::Dropped(p) => p,
        }
    }

    /// `item` through `chain`.
    fn through(item: ferry_api::SourceItem, chain: &crate::transform::Chain) -> Item {
        match item {
            ferry_api::SourceItem::Record(r) if chain.is_empty() => Item::Record(r),
            ferry_api::SourceItem::Record(r) => match chain.apply(r) {
                crate::transform::Outcome::Kept(r) => Item::Record(r),
                crate::transform::Outcome::Failed(r, f) => Item::Failed(r, f),
                crate::transform::Outcome::Dropped(p) => Item::Dropped(p),
            },
            ferry_api::SourceItem::Invalid(i) => Item::Invalid(i),
        }
    }
}

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
    pub fn is_retriable(&self) -> bool {
        match self {
            PipelineError::Connector { source, .. } => source.is_retriable(),
            PipelineError::Offsets(OffsetStoreError::Io { .. }) => true,
            _ => false,
        }
    }

    /// What was being done, for the retry's log line.
    pub fn stage(&self) -> &'static str {
        match self {
            PipelineError::Connector { stage, .. } | PipelineError::BadRecord { stage, .. } => {
                stage
            }
            PipelineError::Offsets(_) => "the offset store",
            PipelineError::Panicked { task, .. } => task,
        }
    }
}

/// What an attempt needs from the process around it.
pub struct PipelineEnv {
    pub data_dir: PathBuf,
    pub store: OffsetStore,
    pub stats: Arc<Stats>,
    /// This attempt is to stop: commit what it has and end.
    pub stop: watch::Receiver<bool>,
    /// Stop by itself once the source has nothing more to read.
    pub once: bool,
}

/// What one attempt leaves for the next.
#[derive(Debug, Default)]
pub struct Carry {
    /// How many of the first items read are a replay of what the attempt
    /// before read but did not commit. (A count, not positions: sources
    /// replay in the order they read, and positions need not be
    /// comparable.)
    pub replays: u64,
    /// The last attempt made a commit durable: the backoff starts over.
    pub committed: bool,
}

/// One life of a pipeline: open the sink, find the committed positions, open
/// the source there, move records until the source ends, the attempt is
/// stopped, or something fails. `started` is called once both ends are open.
///
/// Whatever was built is closed, however the attempt ends: the sink once it
/// was built (even if its `open` failed), the source once it was built.
pub async fn run_attempt(
    p: &PipelineConfig,
    env: &PipelineEnv,
    carry: &mut Carry,
    started: impl FnOnce() + Send,
) -> Result<(), PipelineError> {
    carry.committed = false;
    let ctx = build_context(p, env);
    let mut sink = p
        .sink
        .build(&ctx)
        .await
        .map_err(|e| PipelineError::connector("opening the sink", e))?;
    let result = with_sink(p, env, carry, started, &ctx, &mut *sink).await;
    sink.close().await;
    result
}

fn build_context(p: &PipelineConfig, env: &PipelineEnv) -> BuildContext {
    BuildContext {
        pipeline: p.name.clone(),
        once: env.once,
        stopping: ferry_api::Stopping::new(env.stop.clone()),
        writes: p.local_writes(&env.data_dir),
        retries: ferry_api::Retries::new(env.stats.retries.clone()),
    }
}

/// The attempt once its sink is built: the sink is closed by the caller.
async fn with_sink(
    p: &PipelineConfig,
    env: &PipelineEnv,
    carry: &mut Carry,
    started: impl FnOnce() + Send,
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
    let (source_ctx, flush_requests) = SourceContext::connected();
    if let Err(e) = source.open(&resume.positions, &source_ctx).await {
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
    started();
    move_records(p, env, carry, sink, source, flush_requests, resume).await
}

/// The source task and the writer, until the source ends, ferry stops, or
/// either fails; then the source's last acknowledgement and its `close`.
async fn move_records(
    p: &PipelineConfig,
    env: &PipelineEnv,
    carry: &mut Carry,
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
        carry.replays,
        p.transforms.clone(),
    ));
    let mut writer = Writer {
        p,
        sink,
        store: &env.store,
        dead_letters: DeadLetters::new(p.dead_letter_path(&env.data_dir), &p.name),
        open: Uncommitted {
            positions: resume.positions,
            ..Uncommitted::default()
        },
        kept_by_sink: resume.kept_by_sink,
        reset_pending: resume.reset_pending,
        choice: resume.choice,
        stats,
        commits: commits_tx,
        in_flight: None,
        committed_items: 0,
    };
    // The flush requests go with the writer: a source asking for a flush
    // once it is gone (leaving its group in `close`) learns so at once.
    let written = writer
        .run(FromSource { rx, received: 0 }, flush_requests)
        .await;
    let committed = writer.commits.borrow().clone();
    let committed_items = writer.committed_items;
    carry.committed = committed_items > 0;
    drop(writer);
    // The writer dropped the channel: the reader stops at its next turn.
    let (read, source) = match reader.await {
        Ok((result, source, read)) => {
            carry.replays = read.saturating_sub(committed_items);
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

//! # ferry-api — the connector contract
//!
//! This crate is everything a connector needs to know about ferry, and nothing
//! about how ferry runs it. It plays the part Kafka Connect's `connect/api`
//! plays: connectors depend on it, the runtime depends on the connectors, and
//! nothing cycles.
//!
//! ## The pieces
//!
//! * [`Record`] — one unit of data. Its payload is a JSON value ([`Payload`]:
//!   a source reading JSON text may hand the text over, checked but not
//!   parsed, so a sink writing JSON writes it as it came); beside it sit
//!   an optional key, timestamp and headers, and always its [`Position`].
//! * [`Position`] — where a record sits in its source: an opaque `offset`
//!   inside a [`Partition`] (a file, a topic-partition, a table). The offset of
//!   a record is the point to *resume after* it: restarting a source at that
//!   offset yields the next record. The runtime stores positions; it never
//!   looks inside them.
//! * [`Source`] — reads records and resumes from committed [`Positions`].
//! * [`Sink`] — writes batches and makes them durable. A *transactional* sink
//!   stores the positions with its data (in the same transaction, or the same
//!   atomic manifest) and hands them back on [`Sink::open`]; any other sink
//!   leaves positions to the runtime's offset store.
//! * [`SourceConfig`] / [`SinkConfig`] — a parsed connector configuration. It
//!   is validated without I/O, then built (I/O allowed, no tasks spawned), so
//!   `ferry validate` and a rejected config never leave anything running.
//! * [`ConnectorError`] — says whether a failure is worth retrying. The
//!   runtime, not the connector, owns retries, backoff, error tolerance and the
//!   dead-letter queue.
//!
//! ## The delivery rule
//!
//! The runtime commits a position only after the sink has made every record up
//! to it durable ([`Sink::commit`] returned `Ok`). After a crash the source
//! replays from the last committed position; the sink makes the replay
//! harmless either by being transactional (uncommitted writes are discarded)
//! or idempotent (a replayed record overwrites itself). A sink that is neither
//! is at-least-once, and says so through [`SinkConfig::delivery`].

mod backlog;
mod backoff;
mod config;
pub mod duration;
mod error;
mod record;
mod source_context;

pub use backlog::{Backlog, Lag};
pub use backoff::Backoff;
pub use config::{
    BuildContext, ConfigProblem, Delivery, FieldError, Misfit, PathSegment, Retries, SinkConfig,
    SinkPlugin, SourceConfig, SourcePlugin, Stopping, committed_partition_at, deserialize,
    schema_of,
};
pub use error::ConnectorError;
pub use record::{
    Invalid, Partition, Payload, Position, Positions, Raw, Record, SourceItem, Value,
};
/// The JSON Schema library the connectors derive their config schemas with.
pub use schemars;
pub use source_context::{Durable, SourceContext, runtime_end};

use async_trait::async_trait;

/// Reads records from an external system.
///
/// Lifecycle: [`open`](Source::open) once, then [`poll`](Source::poll) in a
/// loop from a single task, with [`committed`](Source::committed) called
/// between polls whenever a batch became durable, and
/// [`close`](Source::close) at the end. A source is never polled concurrently.
///
/// One source object lives for one *attempt* of its pipeline. After a
/// retriable failure anywhere (its own, the sink's, the offset store's) the
/// runtime closes it, waits out a backoff, builds a new one from the config
/// and opens it at the committed positions: a source keeps nothing across
/// attempts but what it can find again from those positions.
///
/// `open`, `poll`, `committed` and `close` run on the pipeline's source
/// task, one at a time; `open` runs before that task starts, on the
/// pipeline's own task. All are async: blocking work (file reads, a
/// blocking client) goes to `tokio::task::spawn_blocking`.
#[async_trait]
pub trait Source: Send {
    /// Called once before the first poll with the positions committed for this
    /// pipeline (empty on the first run, or after `ferry offsets reset`). The
    /// source resumes *after* them. `ctx` is the runtime's services for this
    /// attempt (a source whose partitions can move to another process keeps
    /// it; others ignore it). An error ends the attempt (`close` is still
    /// called); a retriable one is tried again with a new source.
    async fn open(
        &mut self,
        committed: &Positions,
        ctx: &SourceContext,
    ) -> Result<(), ConnectorError>;

    /// Returns up to `max` items in source order (per partition). Returns
    /// whatever it has rather than waiting for a full batch, and returns an
    /// empty vector after a short wait (about a second at most) when nothing
    /// new arrived, so the runtime can flush and notice shutdown.
    ///
    /// The runtime drops a poll that is still waiting when ferry stops: a
    /// source must not lose anything by that beyond what it returned since
    /// the last commit (which is read again at the next start anyway).
    ///
    /// An item that cannot be turned into a record (a malformed line) is
    /// returned as [`SourceItem::Invalid`] with its position: the runtime
    /// applies the error-tolerance setting to it. An `Err` means the source
    /// itself failed; retriable errors are retried by the runtime.
    async fn poll(&mut self, max: usize) -> Result<Vec<SourceItem>, ConnectorError>;

    /// Whether an empty [`poll`](Source::poll) means the source has caught up
    /// with everything there is to read. `ferry run --once` stops at the
    /// first empty poll of an idle source; a source that knows more records
    /// are about to become readable (waiting for in-flight transactions to
    /// finish, say) returns `false`.
    fn idle(&self) -> bool {
        true
    }

    /// Called after `positions` were committed durably — between polls, and
    /// once more before `close` with the last committed positions (unless
    /// the attempt failed). A source whose upstream tracks progress (a Kafka
    /// consumer group) acknowledges here; most sources need not do anything.
    /// An error is logged, not retried: the positions are durable anyway.
    async fn committed(&mut self, _positions: &Positions) -> Result<(), ConnectorError> {
        Ok(())
    }

    /// Called once at the end of each life of the source, after the last
    /// commit: when the pipeline stops, and before every restart after a
    /// failure (a new source is then built and opened) — also when `open`
    /// itself failed. Not called when the source's task panicked.
    async fn close(&mut self) {}
}

/// A commit in flight (see [`Sink::start_commit`]): resolves when durable.
pub type PendingCommit = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(), ConnectorError>> + Send + 'static>,
>;

/// Writes records to an external system.
///
/// Lifecycle: [`open`](Sink::open) once; then any number of
/// [`write`](Sink::write) calls followed by one [`commit`](Sink::commit) (or
/// [`start_commit`](Sink::start_commit)), over and over, from a single task;
/// then [`close`](Sink::close).
///
/// Failure model: when `write` or `commit` returns an error (or the source
/// or the offset store fails) the runtime settles a commit still in flight,
/// closes the sink, and — for a retriable error, after a backoff — builds a
/// new one, opens it and replays the source from the last committed
/// positions. A sink never has to retry or roll back by itself (it may
/// resend what its server asks it to, as Elasticsearch's 429s); it has to
/// make that replay harmless: a transactional sink discards what it wrote
/// after its last commit (in `open`, or by never committing it), an
/// idempotent one overwrites it.
///
/// Every method runs on the pipeline's writer task, one at a time; the
/// future [`start_commit`](Sink::start_commit) returns runs on a task of
/// its own. Blocking work (file writes, fsyncs) goes to
/// `tokio::task::spawn_blocking`.
#[async_trait]
pub trait Sink: Send {
    /// Called once before the first write, before the source is built. A
    /// transactional sink returns the positions it committed together with
    /// its data (`Some`, possibly empty) and discards anything it wrote after
    /// its last commit. Other sinks return `None`: the runtime's offset store
    /// then holds the positions. An error ends the attempt (`close` is still
    /// called); a retriable one is tried again with a new sink.
    async fn open(&mut self) -> Result<Option<Positions>, ConnectorError>;

    /// Writes records, in order. Nothing has to be durable yet. Returns the
    /// records the destination refused one by one (constraint violations,
    /// mapping errors), by index into `batch`; the runtime dead-letters them
    /// or stops.
    async fn write(&mut self, batch: &[Record]) -> Result<Vec<Rejected>, ConnectorError>;

    /// Makes everything written since the last commit durable. `positions`
    /// are the source positions those records reach; a transactional sink
    /// stores them atomically with the data. Once this returns `Ok` the
    /// runtime treats the positions as committed and never replays before them.
    async fn commit(&mut self, positions: &Positions) -> Result<(), ConnectorError>;

    /// Starts a commit and returns before it is durable, so the next batch
    /// can be written while this one is made durable (a sink with two
    /// connections commits on one while it writes on the other). The
    /// returned future resolves when the commit is durable (or failed); it
    /// runs on its own task. The runtime keeps at most one commit in flight:
    /// it awaits it before starting another, before `close`, and before a
    /// restart reads positions back; it treats the positions as committed
    /// only once the future resolved `Ok`. Writes made meanwhile belong to
    /// the next commit. The default commits synchronously.
    async fn start_commit(
        &mut self,
        positions: &Positions,
    ) -> Result<PendingCommit, ConnectorError> {
        self.commit(positions).await?;
        Ok(Box::pin(std::future::ready(Ok(()))))
    }

    /// The positions this sink's storage holds now for the pipeline,
    /// *including those written by other processes* running the same
    /// pipeline into the same storage (a file sink: the manifest of every
    /// member's output in the same directory), one set per writer. Asked when
    /// a partition moves to this process, so that it resumes where the
    /// previous owner's sink stopped even if that owner died before telling
    /// anyone ([`SourceContext::make_durable_blocking`] reports them). The
    /// default: none besides the runtime's own.
    async fn shared_positions(&mut self) -> Result<Vec<Positions>, ConnectorError> {
        Ok(Vec::new())
    }

    /// Called once at the end of each life of the sink, whatever ended it:
    /// the pipeline stopping, a restart after a failure — also when `open`
    /// itself failed, or the source could not be opened. A commit in flight
    /// has settled by then.
    async fn close(&mut self) {}
}

/// A record the destination refused, by its index in the written batch.
#[derive(Debug)]
pub struct Rejected {
    pub index: usize,
    pub error: ConnectorError,
}

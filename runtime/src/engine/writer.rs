//! The sink task: writes what the source handed over, applies the error
//! tolerance, dead-letters, commits every batch and moves the committed
//! positions only once a commit settled durable.

use std::sync::atomic::Ordering;
use std::time::Instant;

use ferry_api::runtime_end::{FlushRequest, FlushRequests};
use ferry_api::{ConnectorError, Durable, Positions, Record, Rejected, Sink, Value};

use super::Item;
use tokio::sync::{mpsc, watch};

use super::{PipelineError, Stats, WRITE_MAX};
use crate::config::{PipelineConfig, Tolerance};
use crate::dead_letter::DeadLetters;
use crate::offsets::OffsetStore;

/// What has been written since the last commit.
#[derive(Default)]
pub(super) struct Uncommitted {
    /// Committed positions advanced past every item written since.
    pub(super) positions: Positions,
    pub(super) items: usize,
    pub(super) records_out: u64,
    /// Their size as JSON text.
    pub(super) bytes_out: u64,
    pub(super) dead: Vec<Value>,
    /// Records a `filter` transform dropped.
    pub(super) filtered: u64,
    /// When the first item since the last commit arrived.
    pub(super) since: Option<Instant>,
}

pub(super) struct Writer<'a> {
    pub(super) p: &'a PipelineConfig,
    pub(super) sink: &'a mut dyn Sink,
    pub(super) store: &'a OffsetStore,
    pub(super) dead_letters: DeadLetters,
    /// Since the last commit; `positions` starts as the committed ones.
    pub(super) open: Uncommitted,
    pub(super) kept_by_sink: bool,
    /// The store still says "reset": its first save must be durable.
    pub(super) reset_pending: bool,
    /// The operator's choice each commit to the sink marks (`resume.rs`).
    pub(super) choice: Option<u64>,
    pub(super) stats: &'a Stats,
    /// The committed positions, watched by the source task.
    pub(super) commits: watch::Sender<Positions>,
    /// A commit the sink has started but not yet made durable (at most
    /// one), with what becomes committed when it resolves.
    pub(super) in_flight: Option<InFlight>,
    /// Items committed in this attempt.
    pub(super) committed_items: u64,
}

/// The writer's end of the source's channel, counting the items received
/// in this attempt: a flush has everything the source handed over once
/// that count reaches [`FlushRequest::handed`].
pub(super) struct FromSource {
    pub(super) rx: mpsc::Receiver<Vec<Item>>,
    pub(super) received: u64,
}

impl FromSource {
    async fn recv(&mut self) -> Option<Vec<Item>> {
        let items = self.rx.recv().await?;
        self.received += items.len() as u64;
        Some(items)
    }

    /// A chunk already waiting, if any.
    fn try_recv(&mut self) -> Option<Vec<Item>> {
        let items = self.rx.try_recv().ok()?;
        self.received += items.len() as u64;
        Some(items)
    }
}

pub(super) struct InFlight {
    durable: tokio::task::JoinHandle<Result<(), ConnectorError>>,
    open: Uncommitted,
    started: Instant,
}

/// What the writer waits for next.
enum WriterEvent {
    Items(Option<Vec<Item>>),
    FlushDue,
    Durable(Result<Result<(), ConnectorError>, tokio::task::JoinError>),
    Flush(Option<FlushRequest>),
}

impl Writer<'_> {
    pub(super) async fn run(
        &mut self,
        rx: FromSource,
        flushes: FlushRequests,
    ) -> Result<(), PipelineError> {
        let result = self.run_inner(rx, flushes).await;
        // A commit still in flight must settle before this attempt ends: a
        // restart reads the positions back from the sink, and a commit
        // landing after that read would make its records replay. If it
        // made its records durable, its positions move (and are counted)
        // even though the attempt is failing.
        if let Some(f) = self.in_flight.take() {
            let settled = f.durable.await;
            if let Err(e) = self.settled(f.open, settled).await
                && result.is_ok()
            {
                return Err(e);
            }
        }
        result
    }

    async fn run_inner(
        &mut self,
        mut rx: FromSource,
        mut flushes: FlushRequests,
    ) -> Result<(), PipelineError> {
        let mut flushes_open = true;
        loop {
            match self.next_event(&mut rx, &mut flushes, flushes_open).await {
                WriterEvent::FlushDue => self.commit().await?,
                WriterEvent::Flush(None) => flushes_open = false,
                WriterEvent::Flush(Some(request)) => {
                    if !self.flush_for_source(&mut rx, request).await? {
                        return self.commit().await;
                    }
                }
                WriterEvent::Durable(result) => {
                    let f = self.in_flight.take().expect("was in flight");
                    self.settled(f.open, result).await?;
                }
                // The source stopped: commit what was written, then end.
                WriterEvent::Items(None) => return self.commit().await,
                WriterEvent::Items(Some(items)) => self.arrived(&mut rx, items).await?,
            }
        }
    }

    /// Waits for what comes first: items, the flush interval, the commit in
    /// flight settling, or the source asking for a flush.
    async fn next_event(
        &mut self,
        rx: &mut FromSource,
        flushes: &mut FlushRequests,
        flushes_open: bool,
    ) -> WriterEvent {
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
        tokio::select! {
            items = rx.recv() => WriterEvent::Items(items),
            _ = async {
                match due {
                    Some(due) => tokio::time::sleep_until(due.into()).await,
                    None => std::future::pending().await,
                }
            } => WriterEvent::FlushDue,
            result = durable => WriterEvent::Durable(result),
            request = flushes.recv(), if flushes_open => WriterEvent::Flush(request),
        }
    }

    /// Writes and commits everything the source handed over, and answers
    /// `request` with what is durable. False when the source stopped before
    /// all of it arrived (the request is answered with an error: the source
    /// learns nothing was promised).
    async fn flush_for_source(
        &mut self,
        rx: &mut FromSource,
        request: FlushRequest,
    ) -> Result<bool, PipelineError> {
        // Everything the source handed over: what is queued, and what its
        // polls returned that is still on its way (the read task sends it:
        // it does not wait on the source for that).
        let mut items = Vec::new();
        while let Some(more) = rx.try_recv() {
            items.extend(more);
        }
        while rx.received < request.handed {
            match rx.recv().await {
                Some(more) => items.extend(more),
                None => {
                    request.reply(Err("the source stopped".into()));
                    return Ok(false);
                }
            }
        }
        if !items.is_empty() {
            self.write(items).await?;
        }
        self.commit().await?;
        let held_by_sink = self
            .sink
            .shared_positions()
            .await
            .map_err(|e| PipelineError::connector("reading the sink's positions", e))?;
        tracing::debug!(pipeline = %self.p.name, "flushed for the source");
        request.reply(Ok(Durable {
            committed: self.commits.borrow().clone(),
            held_by_sink,
        }));
        Ok(true)
    }

    /// Writes items that arrived, with the chunks already waiting behind
    /// them, and starts a commit once the batch is full.
    async fn arrived(
        &mut self,
        rx: &mut FromSource,
        mut items: Vec<Item>,
    ) -> Result<(), PipelineError> {
        // A backlog is written in fewer, larger writes: every write costs
        // the sink round trips (a savepoint, a COPY), whatever its size.
        // Only chunks already waiting are taken, so a quiet stream is not
        // delayed.
        while items.len() < WRITE_MAX {
            match rx.try_recv() {
                Some(more) => items.extend(more),
                None => break,
            }
        }
        self.write(items).await?;
        if self.open.items >= self.p.delivery.batch_size {
            // The next batch is written while this one is made durable.
            self.start_commit().await?;
        }
        Ok(())
    }

    /// Writes one chunk. With `tolerance: none` a bad item commits what came
    /// before it and stops the pipeline.
    async fn write(&mut self, mut items: Vec<Item>) -> Result<(), PipelineError> {
        let bad_at = match self.p.errors.tolerance {
            Tolerance::None => items
                .iter()
                .position(|it| matches!(it, Item::Invalid(_) | Item::Failed(..))),
            Tolerance::All => None,
        };
        let bad = bad_at.and_then(|i| items.drain(i..).next());
        self.open.since.get_or_insert_with(Instant::now);
        self.open.items += items.len();
        self.open
            .positions
            .advance_all(items.iter().map(Item::position));
        let mut records: Vec<Record> = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Item::Record(r) => records.push(r),
                Item::Invalid(i) => self.open.dead.push(self.dead_letters.invalid(&i)),
                Item::Failed(r, f) => self.open.dead.push(self.dead_letters.untransformed(&r, &f)),
                // Its position moved above; nothing to write.
                Item::Dropped(_) => self.open.filtered += 1,
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
        self.open.bytes_out += accepted_bytes(&records, &rejected);
        if let Some(bad) = bad {
            self.commit().await?;
            return Err(match bad {
                Item::Failed(r, f) => PipelineError::BadRecord {
                    stage: "transform",
                    position: r.position.describe(),
                    error: format!("transforms[{}] ({}): {}", f.step, f.kind, f.error),
                },
                Item::Invalid(bad) => PipelineError::BadRecord {
                    stage: "source",
                    position: bad.position.describe(),
                    error: bad.error,
                },
                Item::Record(_) | Item::Dropped(_) => {
                    unreachable!("only bad items are taken aside")
                }
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
                let took = f.started.elapsed();
                self.settled(f.open, result).await?;
                self.stats.commit_seconds.observe(took.as_secs_f64());
                Ok(())
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
        let marked;
        let positions = match self.choice {
            Some(choice) if self.kept_by_sink => {
                marked = super::resume::marked(&self.open.positions, choice);
                &marked
            }
            _ => &self.open.positions,
        };
        let pending = self
            .sink
            .start_commit(positions)
            .await
            .map_err(|e| PipelineError::connector("committing to the sink", e))?;
        let open = std::mem::take(&mut self.open);
        self.open.positions = open.positions.clone();
        self.in_flight = Some(InFlight {
            durable: tokio::spawn(pending),
            open,
            started: Instant::now(),
        });
        Ok(())
    }

    /// A commit resolved. If it is durable, now, and only now, its positions
    /// move. The offset store's write (an fsync when it holds the truth)
    /// runs on a blocking thread, not on the async workers.
    async fn settled(
        &mut self,
        open: Uncommitted,
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
        let (kept_by_sink, durable, choice) = (self.kept_by_sink, self.reset_pending, self.choice);
        let saved = tokio::task::spawn_blocking(move || {
            store.save(&name, &positions, kept_by_sink, durable, choice)
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
            .bytes_out
            .fetch_add(open.bytes_out, Ordering::Relaxed);
        self.stats
            .dead_lettered
            .fetch_add(open.dead.len() as u64, Ordering::Relaxed);
        self.stats
            .filtered
            .fetch_add(open.filtered, Ordering::Relaxed);
        self.stats.batch_records.observe(open.items as f64);
        self.stats.committed_now(&open.positions);
        self.commits.send_replace(open.positions);
        Ok(())
    }
}

/// One record in this many is serialized to estimate the size of those
/// that hold a parsed value: serializing every one cost 13% more
/// instructions on file → file (measured with callgrind).
const SIZE_SAMPLE: usize = 32;

/// The size as JSON text of the records the sink took (all but
/// `rejected`, sorted by index): the text's length when a record kept the
/// text it was read as (no work); for parsed values, the serialized size of
/// one in [`SIZE_SAMPLE`], scaled to all of them.
fn accepted_bytes(records: &[Record], rejected: &[Rejected]) -> u64 {
    let mut refused = rejected.iter().map(|r| r.index).peekable();
    let (mut text, mut parsed, mut sampled, mut sample_bytes) = (0u64, 0u64, 0u64, 0u64);
    for (i, r) in records.iter().enumerate() {
        if refused.next_if_eq(&i).is_some() {
            continue;
        }
        match r.value.json_text() {
            Some(t) => text += t.len() as u64,
            None => {
                if parsed % SIZE_SAMPLE as u64 == 0 {
                    let mut counted = Counted(0);
                    let _ = serde_json::to_writer(&mut counted, &*r.value);
                    sample_bytes += counted.0;
                    sampled += 1;
                }
                parsed += 1;
            }
        }
    }
    let estimated = match sampled {
        0 => 0,
        n => (sample_bytes as f64 * parsed as f64 / n as f64).round() as u64,
    };
    text + estimated
}

/// Counts what is written to it.
struct Counted(u64);

impl std::io::Write for Counted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

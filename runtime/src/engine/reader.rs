//! The source task: polls the source, runs the pipeline's transforms on
//! each chunk (so the sink's task spends nothing on them) and hands it to
//! the writer, tells the source what was committed, ends at a stop or when
//! the writer is gone.
//!
//! Transforms run on the blocking pool, several chunks at once (one per
//! core): a chain can cost more than reading and writing together, and one
//! core would then set the pace. A forwarding task hands the chunks on in
//! the order they were read, so every partition's records stay in order;
//! the chunks in the works are bounded like the queue to the writer.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use ferry_api::{Positions, Source, SourceItem};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::{Item, PipelineError, Stats};
use crate::transform::Chain;

/// Returns, with the source, how many items it read.
#[allow(clippy::too_many_arguments)]
pub(super) async fn read_loop(
    mut source: Box<dyn Source>,
    tx: mpsc::Sender<Vec<Item>>,
    mut commits: watch::Receiver<Positions>,
    mut stop: watch::Receiver<bool>,
    stats: Arc<Stats>,
    max: usize,
    once: bool,
    mut replays: u64,
    chain: Arc<Chain>,
) -> (Result<(), PipelineError>, Box<dyn Source>, u64) {
    let mut read = 0u64;
    // Transforming, the forwarder holds the only sender: if it dies (a
    // transform panicked), the writer sees the end, and this loop sees
    // the chunks' channel closed.
    let mut handoff = if chain.is_empty() {
        Handoff::Direct(tx)
    } else {
        Handoff::Transforming(Transforming::start(tx))
    };
    let result = loop {
        // The writer gone (it failed, or the source ended) is as good as a
        // stop. Checked every turn, not only when a send fails: a source at
        // its end never sends again, and the restart waits for this task.
        if *stop.borrow() || handoff.is_closed() {
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
        let forwarder_gone = async {
            match &handoff {
                Handoff::Transforming(t) => t.chunks.closed().await,
                Handoff::Direct(_) => std::future::pending().await,
            }
        };
        let polled = tokio::select! {
            polled = source.poll(max) => polled,
            _ = stop.wait_for(|s| *s) => break Ok(()),
            _ = forwarder_gone => break Ok(()),
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
        stats.read_up_to(&items);
        // Sent even when a stop came meanwhile: a stop drains what the
        // source returned (the writer writes and commits it), so a restart
        // asked for reads nothing twice. The send waits only for the writer.
        let sent = match &mut handoff {
            Handoff::Transforming(t) => t.send(items, &chain).await,
            Handoff::Direct(tx) => {
                let items = items.into_iter().map(|it| Item::through(it, &chain));
                tx.send(items.collect()).await.is_ok()
            }
        };
        if !sent {
            break Ok(());
        }
    };
    let result = match handoff {
        // What is being transformed is handed on before the task ends.
        Handoff::Transforming(t) => match (result, t.finish().await) {
            (Ok(()), Err(e)) => Err(e),
            (result, _) => result,
        },
        Handoff::Direct(_) => result,
    };
    (result, source, read)
}

/// How read chunks reach the writer: straight, or through the transforms.
enum Handoff {
    Direct(mpsc::Sender<Vec<Item>>),
    Transforming(Transforming),
}

impl Handoff {
    /// Nothing takes chunks any more (the writer, or the forwarder, is gone).
    fn is_closed(&self) -> bool {
        match self {
            Handoff::Direct(tx) => tx.is_closed(),
            Handoff::Transforming(t) => t.chunks.is_closed(),
        }
    }
}

/// Chunks in the works on the blocking pool, in the order they were read.
struct Transforming {
    chunks: mpsc::Sender<JoinHandle<Vec<Item>>>,
    forwarder: JoinHandle<Result<(), PipelineError>>,
}

impl Transforming {
    fn start(tx: mpsc::Sender<Vec<Item>>) -> Self {
        let parallel = std::thread::available_parallelism().map_or(2, |n| n.get().min(8));
        let (chunks, mut todo) = mpsc::channel::<JoinHandle<Vec<Item>>>(parallel);
        let forwarder = tokio::spawn(async move {
            // Ends when the writer is gone too, so that this loop sees it
            // (the chunks' channel closes) even while nothing is sent.
            while let Some(chunk) = tokio::select! {
                chunk = todo.recv() => chunk,
                _ = tx.closed() => None,
            } {
                let items = chunk.await.map_err(|e| PipelineError::Panicked {
                    task: "transform",
                    message: crate::panics::join_error_message(e),
                })?;
                if tx.send(items).await.is_err() {
                    break;
                }
            }
            Ok(())
        });
        Transforming { chunks, forwarder }
    }

    /// Starts transforming a chunk; false when nothing takes chunks any
    /// more (the writer is gone).
    async fn send(&mut self, items: Vec<SourceItem>, chain: &Arc<Chain>) -> bool {
        // Room first: no more chunks in the works than the channel holds.
        let Ok(room) = self.chunks.reserve().await else {
            return false;
        };
        let chain = chain.clone();
        room.send(tokio::task::spawn_blocking(move || {
            items
                .into_iter()
                .map(|it| Item::through(it, &chain))
                .collect()
        }));
        true
    }

    /// Waits until every chunk started is handed on.
    async fn finish(self) -> Result<(), PipelineError> {
        drop(self.chunks);
        match self.forwarder.await {
            Ok(result) => result,
            Err(e) => Err(PipelineError::Panicked {
                task: "transform",
                message: crate::panics::join_error_message(e),
            }),
        }
    }
}

//! A source's way to have the runtime make everything durable *now*.
//!
//! A Kafka consumer must hand revoked partitions over with everything it
//! read of them either durable in the sink (and committed to the group) or
//! forgotten; otherwise the next owner reads again what this process is about
//! to write, and the record arrives twice. The revocation happens inside the
//! consumer's poll, on the source's polling thread, while the records read
//! before it wait in the runtime's queue — or are still on their way there,
//! when the source polls ahead on a thread of its own. So the source asks,
//! saying how many items its polls have returned so far, and blocks until
//! the runtime has received that many, written them, committed them, and
//! answered with the committed positions.

use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::Positions;

/// What a flush reports.
#[derive(Debug, Clone, Default)]
pub struct Flushed {
    /// Positions committed once everything handed over was durable.
    pub committed: Positions,
    /// Positions the sink's shared storage holds, one set per writer
    /// ([`crate::Sink::shared_positions`]).
    pub shared: Vec<Positions>,
}

/// The source's end: ask for a flush. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Flush {
    tx: mpsc::Sender<FlushRequest>,
}

/// The runtime's end: flush requests as they come.
#[derive(Debug)]
pub struct FlushRequests {
    rx: mpsc::Receiver<FlushRequest>,
}

/// One request; answer it with [`FlushRequest::reply`].
#[derive(Debug)]
pub struct FlushRequest {
    /// Items the source's polls had returned since `open` when it asked.
    pub handed: u64,
    reply: std_mpsc::SyncSender<Result<Flushed, String>>,
}

impl Flush {
    /// A connected pair.
    pub fn channel() -> (Flush, FlushRequests) {
        // One source asks at a time; a second request waits its turn.
        let (tx, rx) = mpsc::channel(1);
        (Flush { tx }, FlushRequests { rx })
    }

    /// Asks for a flush and blocks this thread until it is done. For use on a
    /// blocking thread only (a consumer callback): on an async task it would
    /// stall the very writer that answers, and tokio panics.
    ///
    /// `handed` is the number of items the source's polls have returned since
    /// [`crate::Source::open`]: the runtime waits until it has received that
    /// many, so items a poll returned a moment ago, still on their way to the
    /// writer, are covered too.
    ///
    /// `Err` says why nothing can be promised: the pipeline is stopping or
    /// failed, or `timeout` passed; the caller then relies on what it already
    /// knows to be durable.
    pub fn blocking(&self, handed: u64, timeout: Duration) -> Result<Flushed, String> {
        let (reply, answer) = std_mpsc::sync_channel(1);
        self.tx
            .blocking_send(FlushRequest { handed, reply })
            .map_err(|_| "the pipeline is not writing any more".to_string())?;
        match answer.recv_timeout(timeout) {
            Ok(result) => result,
            Err(std_mpsc::RecvTimeoutError::Timeout) => Err(format!("no flush within {timeout:?}")),
            Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                Err("the pipeline stopped before the flush was done".into())
            }
        }
    }
}

impl FlushRequests {
    /// The next request; `None` once every [`Flush`] is gone.
    pub async fn recv(&mut self) -> Option<FlushRequest> {
        self.rx.recv().await
    }
}

impl FlushRequest {
    /// Answers the request (the asker may have given up: that is fine).
    pub fn reply(self, result: Result<Flushed, String>) {
        let _ = self.reply.try_send(result);
    }
}

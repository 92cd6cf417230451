//! What the runtime hands a source when it opens it.
//!
//! Most sources ignore it. It exists for a source whose partitions can move
//! to another process while it runs (a Kafka consumer group): such a source
//! must hand revoked partitions over with everything it read of them either
//! durable in the sink or forgotten, or the next owner reads again what this
//! process is about to write, and the record arrives twice. The revocation
//! happens inside the consumer's poll, on the source's own thread, while the
//! records read before it wait in the runtime's queue — or are still on
//! their way there. So the source asks, saying how many items its polls have
//! returned so far, and blocks until the runtime has received that many,
//! written them, committed them, and answered with the committed positions
//! and those the sink's storage holds.

use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::Positions;

/// The runtime's services to one source, for one attempt. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SourceContext {
    flushes: mpsc::Sender<FlushRequest>,
}

/// What [`SourceContext::make_durable_blocking`] reports.
#[derive(Debug, Clone, Default)]
pub struct Durable {
    /// Positions committed once everything handed over was durable.
    pub committed: Positions,
    /// Positions the sink's storage holds, one set per writer, including
    /// writers in other processes running the same pipeline
    /// ([`crate::Sink::shared_positions`]).
    pub held_by_sink: Vec<Positions>,
}

impl SourceContext {
    /// A context no runtime answers: every flush is refused at once. For a
    /// source opened outside a pipeline (tests, tools).
    pub fn detached() -> SourceContext {
        SourceContext::connected().0
    }

    /// A context and the runtime's end of it.
    pub fn connected() -> (SourceContext, runtime_end::FlushRequests) {
        // One source asks at a time; a second request waits its turn.
        let (flushes, rx) = mpsc::channel(1);
        (SourceContext { flushes }, runtime_end::FlushRequests { rx })
    }

    /// Asks the runtime to make everything the source handed over durable
    /// now, and blocks this thread until it is. For use on a blocking thread
    /// only (a consumer callback): on an async task it would stall the very
    /// writer that answers, and tokio panics.
    ///
    /// `handed` is the number of items the source's polls have returned
    /// since [`crate::Source::open`], counted when the source decided to
    /// return them (under the lock its revocation takes): the runtime waits
    /// until it has received that many, so items a poll returned a moment
    /// ago, still on their way to the writer, are covered too.
    ///
    /// `Err` says why nothing can be promised: the pipeline is stopping or
    /// failed, or `timeout` passed; the caller then relies on what it already
    /// knows to be durable.
    pub fn make_durable_blocking(&self, handed: u64, timeout: Duration) -> Result<Durable, String> {
        let (reply, answer) = std_mpsc::sync_channel(1);
        self.flushes
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

/// One request of [`SourceContext::make_durable_blocking`].
#[derive(Debug)]
pub struct FlushRequest {
    /// Items the source's polls had returned since `open` when it asked.
    pub handed: u64,
    reply: std_mpsc::SyncSender<Result<Durable, String>>,
}

impl FlushRequest {
    /// Answers the request (the asker may have given up: that is fine).
    pub fn reply(self, result: Result<Durable, String>) {
        let _ = self.reply.try_send(result);
    }
}

/// The runtime's end of a [`SourceContext`]; connectors do not use it.
pub mod runtime_end {
    use super::*;

    pub use super::FlushRequest;

    /// Flush requests as they come.
    #[derive(Debug)]
    pub struct FlushRequests {
        pub(super) rx: mpsc::Receiver<FlushRequest>,
    }

    impl FlushRequests {
        /// The next request; `None` once every [`SourceContext`] is gone.
        pub async fn recv(&mut self) -> Option<FlushRequest> {
            self.rx.recv().await
        }
    }
}

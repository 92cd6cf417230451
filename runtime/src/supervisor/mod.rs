//! One supervisor per pipeline: the one owner of its lifecycle.
//!
//! The supervisor runs the pipeline's attempts ([`crate::engine::run_attempt`])
//! one after another and alone decides what follows each: a retriable error
//! is a backoff and a new attempt from the committed positions; a fatal
//! error or a panic ends the pipeline as failed; a stop asked for ends it as
//! stopped, after the running attempt committed what it had.
//!
//! It is steered through a channel of [`Command`]s and publishes its
//! [`Status`] through a watch, so that whoever steers or watches (the run
//! loop today; a reload, an admin API later) needs nothing else. Commands
//! are read while an attempt runs and while it waits to retry.

mod status;

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use ferry_api::Backoff;
use futures_util::FutureExt;
use tokio::sync::{mpsc, watch};

use crate::config::PipelineConfig;
use crate::engine::{Carry, PipelineEnv, PipelineError, Stats, run_attempt};
use crate::offsets::OffsetStore;
use status::StatusBoard;
pub use status::{Snapshot, State, Status, TimedError};

/// What a supervisor can be asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Stop reading, commit what was read, close both ends, end as stopped.
    Stop,
    /// The same, then start again at once from the committed positions
    /// (a waiting retry starts now).
    Restart,
}

/// What every pipeline of a run shares.
#[derive(Clone)]
pub struct RunContext {
    pub data_dir: PathBuf,
    pub store: OffsetStore,
    /// Stop by itself once the source has nothing more to read.
    pub once: bool,
}

/// The steering end of a running pipeline. Dropping it does not stop the
/// pipeline.
pub struct PipelineHandle {
    name: String,
    commands: mpsc::Sender<Command>,
    status: watch::Receiver<Status>,
    stats: Arc<Stats>,
}

impl PipelineHandle {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Asks the supervisor; false when it has already ended.
    pub async fn send(&self, command: Command) -> bool {
        self.commands.send(command).await.is_ok()
    }

    /// The state with the counters, now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot::read(&self.name, &self.status, &self.stats)
    }

    /// Every change of state, as it happens.
    pub fn watch(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }
}

/// Starts supervising `p`: the returned future runs the pipeline until it
/// stops (Ok) or fails for good (Err with the error in words); spawn it.
pub fn supervise(
    p: Arc<PipelineConfig>,
    context: RunContext,
) -> (
    PipelineHandle,
    impl Future<Output = Result<(), String>> + Send + 'static,
) {
    // A few commands may wait: an operator does not type faster than a
    // supervisor reads.
    let (commands_tx, commands) = mpsc::channel(8);
    let (board, status) = StatusBoard::new();
    let stats = Arc::new(Stats::default());
    let handle = PipelineHandle {
        name: p.name.clone(),
        commands: commands_tx,
        status,
        stats: stats.clone(),
    };
    let supervisor = Supervisor {
        backoff: Backoff::new(p.errors.retry_backoff, p.errors.retry_backoff_max),
        p,
        context,
        stats,
        board,
        commands,
        carry: Carry::default(),
    };
    (handle, supervisor.run())
}

struct Supervisor {
    p: Arc<PipelineConfig>,
    context: RunContext,
    stats: Arc<Stats>,
    board: StatusBoard,
    commands: mpsc::Receiver<Command>,
    backoff: Backoff,
    carry: Carry,
}

/// What follows an attempt.
enum AfterAttempt {
    /// A new attempt, now.
    Again,
    /// A retriable failure: wait, then a new attempt.
    Retry(PipelineError),
    /// The pipeline's end: stopped, or failed with the error in words.
    End(Result<(), String>),
}

impl Supervisor {
    async fn run(mut self) -> Result<(), String> {
        loop {
            self.board.set(State::Starting);
            let end = match self.attempt().await {
                AfterAttempt::Again => continue,
                AfterAttempt::Retry(e) => match self.wait_to_retry(e).await {
                    None => continue,
                    Some(end) => end,
                },
                AfterAttempt::End(end) => end,
            };
            match &end {
                Ok(()) => {
                    tracing::info!(pipeline = %self.p.name, "pipeline stopped");
                    self.board.set(State::Stopped);
                }
                Err(error) => {
                    tracing::error!(pipeline = %self.p.name, "pipeline failed: {error}");
                    self.board.set(State::Failed {
                        error: error.clone(),
                    });
                }
            }
            return end;
        }
    }

    /// Runs one attempt, reading commands meanwhile, and says what follows.
    async fn attempt(&mut self) -> AfterAttempt {
        let (stop_tx, stop) = watch::channel(false);
        let env = PipelineEnv {
            data_dir: self.context.data_dir.clone(),
            store: self.context.store.clone(),
            stats: self.stats.clone(),
            stop,
            once: self.context.once,
        };
        let board = &self.board;
        // A panic anywhere on this task (a sink's write, a source's open)
        // is this pipeline's failure, not the process's.
        let attempt = AssertUnwindSafe(run_attempt(&self.p, &env, &mut self.carry, || {
            board.set(State::Running)
        }))
        .catch_unwind();
        tokio::pin!(attempt);
        // What the attempt was asked to stop for, if it was.
        let mut asked: Option<Command> = None;
        let mut commands_open = true;
        let result = loop {
            tokio::select! {
                result = &mut attempt => break result,
                command = self.commands.recv(), if commands_open && asked.is_none() => match command {
                    Some(command) => {
                        tracing::info!(pipeline = %self.p.name, ?command, "stopping the attempt: committing what it read");
                        asked = Some(command);
                        stop_tx.send_replace(true);
                    }
                    None => commands_open = false,
                },
            }
        };
        let result = match result {
            Ok(result) => result,
            Err(panic) => Err(PipelineError::Panicked {
                task: "pipeline",
                message: crate::panic_message(&*panic),
            }),
        };
        match (result, asked) {
            (Ok(()), Some(Command::Restart)) => AfterAttempt::Again,
            (Ok(()), _) => AfterAttempt::End(Ok(())),
            (Err(e), Some(command)) if e.is_retriable() => {
                // Cut short by the stop itself (a write that stopped waiting
                // for its server): not a failure to retry.
                tracing::info!(pipeline = %self.p.name, error = %connector_words(&e), "{} ended by the stop", e.stage());
                match command {
                    Command::Restart => AfterAttempt::Again,
                    Command::Stop => AfterAttempt::End(Ok(())),
                }
            }
            (Err(e), _) if e.is_retriable() => AfterAttempt::Retry(e),
            (Err(e), _) => AfterAttempt::End(Err(e.to_string())),
        }
    }

    /// Publishes the failure and waits out the backoff, reading commands.
    /// `None`: start again; else the pipeline's end.
    async fn wait_to_retry(&mut self, error: PipelineError) -> Option<Result<(), String>> {
        if self.carry.committed {
            self.backoff.reset();
        }
        let delay = self.backoff.next_delay();
        self.stats
            .retries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let words = connector_words(&error);
        tracing::warn!(
            pipeline = %self.p.name,
            error = %words,
            retry_in = ?delay,
            "{} failed; starting again from the committed positions",
            error.stage()
        );
        self.board.set(State::Retrying {
            error: error.to_string(),
            next_attempt: SystemTime::now() + delay,
        });
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        tokio::select! {
            _ = &mut sleep => None,
            command = self.commands.recv() => match command {
                Some(Command::Stop) => Some(Ok(())),
                Some(Command::Restart) => None,
                // Nobody can steer any more: the retry still comes.
                None => {
                    (&mut sleep).await;
                    None
                }
            },
        }
    }
}

/// The connector's own words: the stage is said apart in the log line.
fn connector_words(error: &PipelineError) -> String {
    match error {
        PipelineError::Connector { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}

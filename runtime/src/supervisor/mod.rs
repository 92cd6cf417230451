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

mod paused;
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
    /// (a waiting retry starts now; a paused pipeline resumes).
    Restart,
    /// Stop reading, commit what was read, close both ends, and wait in
    /// `paused` for a resume (or a restart, or a stop).
    Pause,
    /// A paused pipeline starts again from the committed positions.
    Resume,
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
#[derive(Clone)]
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
    /// Asks the supervisor without waiting: Err(true) when earlier
    /// commands still wait (a drain that does not end), Err(false) when it
    /// has ended.
    pub fn offer(&self, command: Command) -> Result<(), bool> {
        self.commands
            .try_send(command)
            .map_err(|e| matches!(e, mpsc::error::TrySendError::Full(_)))
    }

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

/// How long an attempt still opening its connectors has to notice a stop
/// before the opening is dropped.
const OPEN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// What follows an attempt.
enum AfterAttempt {
    /// A new attempt, now.
    Again,
    /// Drained as asked: wait paused.
    Pause,
    /// A retriable failure: wait, then a new attempt.
    Retry(PipelineError),
    /// The pipeline's end: stopped, or failed with the error in words.
    End(Result<(), String>),
}

/// What ends a wait to retry.
enum Wake {
    /// The time came, or a restart: a new attempt.
    Start,
    /// Paused while waiting.
    Pause,
    /// Stopped while waiting.
    End(Result<(), String>),
}

impl Supervisor {
    async fn run(self) -> Result<(), String> {
        // The lag is measured for as long as the pipeline lives.
        let lag = tokio::spawn(crate::lag::watch(
            self.p.clone(),
            self.stats.clone(),
            self.board.subscribe(),
            self.context.data_dir.clone(),
        ))
        .abort_handle();
        let end = self.supervise().await;
        lag.abort();
        end
    }

    async fn supervise(mut self) -> Result<(), String> {
        let mut paused = paused::is_paused(&self.context.data_dir, &self.p.name).await;
        loop {
            if paused {
                match self.wait_paused().await {
                    Some(end) => return self.end(end),
                    None => paused = false,
                }
            }
            self.board.set(State::Starting);
            let end = match self.attempt().await {
                AfterAttempt::Again => continue,
                AfterAttempt::Pause => {
                    paused = true;
                    continue;
                }
                AfterAttempt::Retry(e) => match self.wait_to_retry(e).await {
                    Wake::Start => continue,
                    Wake::Pause => {
                        paused = true;
                        continue;
                    }
                    Wake::End(end) => end,
                },
                AfterAttempt::End(end) => end,
            };
            return self.end(end);
        }
    }

    /// Logs and publishes the pipeline's end.
    fn end(&self, end: Result<(), String>) -> Result<(), String> {
        {
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
        }
        end
    }

    /// Paused: marks it in the data folder and waits for a command. `None`:
    /// start again (resumed or restarted; the mark is cleared); else the
    /// pipeline's end.
    async fn wait_paused(&mut self) -> Option<Result<(), String>> {
        self.set_mark(true).await;
        self.board.set(State::Paused);
        tracing::info!(pipeline = %self.p.name, "pipeline paused: nothing is read until it is resumed");
        loop {
            match self.commands.recv().await {
                Some(Command::Resume | Command::Restart) => {
                    self.set_mark(false).await;
                    tracing::info!(pipeline = %self.p.name, "pipeline resumed: starting from the committed positions");
                    return None;
                }
                // Stopped while paused: it stays paused at the next start.
                Some(Command::Stop) => return Some(Ok(())),
                Some(Command::Pause) => {}
                // Nobody can resume it: it ends (paused still).
                None => return Some(Ok(())),
            }
        }
    }

    async fn set_mark(&self, paused: bool) {
        if let Err(e) = paused::set_paused(&self.context.data_dir, &self.p.name, paused).await {
            tracing::warn!(pipeline = %self.p.name, "could not record the pause in the data folder (it holds only until ferry stops): {e}");
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
        // Asked to stop while still opening: a connector waiting on a server
        // that never answers (a port that accepts and stays silent) may not
        // see the stop. Nothing was read yet, so past a short grace the
        // opening is dropped rather than waited for.
        let mut cut_at: Option<tokio::time::Instant> = None;
        let result = loop {
            let cut = async {
                match cut_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                result = &mut attempt => break result,
                _ = cut => {
                    tracing::info!(pipeline = %self.p.name, "still opening {}s after the stop: the opening is cut short (nothing was read)", OPEN_GRACE.as_secs());
                    break Ok(Ok(()));
                }
                command = self.commands.recv(), if commands_open && asked.is_none() => match command {
                    // Running already: nothing to resume.
                    Some(Command::Resume) => {}
                    Some(command) => {
                        tracing::info!(pipeline = %self.p.name, ?command, "stopping the attempt: committing what it read");
                        asked = Some(command);
                        stop_tx.send_replace(true);
                        if self.board.state() == State::Starting {
                            cut_at = Some(tokio::time::Instant::now() + OPEN_GRACE);
                        }
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
            (Ok(()), Some(Command::Pause)) => AfterAttempt::Pause,
            (Ok(()), _) => AfterAttempt::End(Ok(())),
            (Err(e), Some(command)) if e.is_retriable() => {
                // Cut short by the stop itself (a write that stopped waiting
                // for its server): not a failure to retry.
                tracing::info!(pipeline = %self.p.name, error = %connector_words(&e), "{} ended by the stop", e.stage());
                match command {
                    Command::Restart | Command::Resume => AfterAttempt::Again,
                    Command::Pause => AfterAttempt::Pause,
                    Command::Stop => AfterAttempt::End(Ok(())),
                }
            }
            (Err(e), _) if e.is_retriable() => AfterAttempt::Retry(e),
            (Err(e), _) => AfterAttempt::End(Err(e.to_string())),
        }
    }

    /// Publishes the failure and waits out the backoff, reading commands.
    async fn wait_to_retry(&mut self, error: PipelineError) -> Wake {
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
        loop {
            tokio::select! {
                _ = &mut sleep => return Wake::Start,
                command = self.commands.recv() => match command {
                    Some(Command::Stop) => return Wake::End(Ok(())),
                    Some(Command::Restart) => return Wake::Start,
                    Some(Command::Pause) => return Wake::Pause,
                    Some(Command::Resume) => {}
                    // Nobody can steer any more: the retry still comes.
                    None => {
                        (&mut sleep).await;
                        return Wake::Start;
                    }
                },
            }
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

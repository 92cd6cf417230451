//! What a pipeline is doing, as its operator sees it: the state its
//! supervisor publishes through a watch, and the counters beside it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use tokio::sync::watch;

use crate::engine::Stats;

/// The states of a pipeline. Every pipeline is in exactly one; its
/// supervisor alone moves it from one to the next.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Building and opening its sink and source (first, and after a retry).
    Starting,
    /// Source and sink open: records move.
    Running,
    /// An attempt failed with a retriable error; the next one starts at
    /// `next_attempt` from the committed positions.
    Retrying {
        error: String,
        next_attempt: SystemTime,
    },
    /// Drained and stopped by an operator; nothing is read until resumed
    /// (kept across restarts of ferry).
    Paused,
    /// Ended by an error that a retry would not cure (or a panic: a bug).
    Failed { error: String },
    /// Ended as asked: a shutdown, or `--once` with nothing more to read.
    Stopped,
}

impl State {
    /// The state's one-word name (`starting`, `running`, …).
    pub fn name(&self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Retrying { .. } => "retrying",
            State::Paused => "paused",
            State::Failed { .. } => "failed",
            State::Stopped => "stopped",
        }
    }

    /// Whether the pipeline has ended (nothing will move it again).
    pub fn is_final(&self) -> bool {
        matches!(self, State::Failed { .. } | State::Stopped)
    }
}

/// An error and when it happened.
#[derive(Debug, Clone, PartialEq)]
pub struct TimedError {
    pub error: String,
    pub at: SystemTime,
}

/// What the supervisor publishes each time something changes.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub state: State,
    /// When the pipeline entered `state`.
    pub since: SystemTime,
    /// Attempts started after a failure.
    pub restarts: u64,
    /// The last error of any attempt, kept after the pipeline recovered.
    pub last_error: Option<TimedError>,
}

impl Status {
    fn new() -> Status {
        Status {
            state: State::Starting,
            since: SystemTime::now(),
            restarts: 0,
            last_error: None,
        }
    }
}

/// The supervisor's end of the watch: the only writer of a pipeline's
/// [`Status`].
pub(crate) struct StatusBoard {
    tx: watch::Sender<Status>,
}

impl StatusBoard {
    pub(crate) fn new() -> (StatusBoard, watch::Receiver<Status>) {
        let (tx, rx) = watch::channel(Status::new());
        (StatusBoard { tx }, rx)
    }

    /// A reader of what is published.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Status> {
        self.tx.subscribe()
    }

    /// The state published last.
    pub(crate) fn state(&self) -> State {
        self.tx.borrow().state.clone()
    }

    pub(crate) fn set(&self, state: State) {
        self.tx.send_modify(|s| {
            if let State::Retrying { error, .. } | State::Failed { error } = &state {
                s.last_error = Some(TimedError {
                    error: error.clone(),
                    at: SystemTime::now(),
                });
            }
            if matches!(state, State::Starting) && matches!(s.state, State::Retrying { .. }) {
                s.restarts += 1;
            }
            s.state = state;
            s.since = SystemTime::now();
        });
    }
}

/// A pipeline's state with its counters, as read at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub name: String,
    pub status: Status,
    pub records_in: u64,
    pub replayed: u64,
    pub records_out: u64,
    pub dead_lettered: u64,
    /// Dropped by a `filter` transform.
    pub filtered: u64,
    pub retries: u64,
    /// When a commit last became durable (none yet in this run).
    pub last_commit: Option<SystemTime>,
    /// The committed positions, in words.
    pub committed: String,
}

impl Snapshot {
    pub(crate) fn read(name: &str, status: &watch::Receiver<Status>, stats: &Arc<Stats>) -> Self {
        Snapshot {
            name: name.to_string(),
            status: status.borrow().clone(),
            records_in: stats.records_in.load(Ordering::Relaxed),
            replayed: stats.replayed.load(Ordering::Relaxed),
            records_out: stats.records_out.load(Ordering::Relaxed),
            dead_lettered: stats.dead_lettered.load(Ordering::Relaxed),
            filtered: stats.filtered.load(Ordering::Relaxed),
            retries: stats.retries.load(Ordering::Relaxed),
            last_commit: stats.last_commit(),
            committed: stats.committed(),
        }
    }
}

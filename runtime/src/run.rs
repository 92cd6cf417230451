//! Runs a set of pipelines, each under its supervisor, until a shutdown
//! future resolves or every pipeline has ended; holds the data folder's
//! lock meanwhile.

use std::collections::HashMap;
use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use crate::config::{self, PipelineConfig};
use crate::offsets::OffsetStore;
use crate::progress::Progress;
use crate::supervisor::{self, Command, PipelineHandle};

/// Errors that keep [`run`] from starting at all.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("data folder {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another ferry is already running with the data folder {0} (it holds {0}/ferry.lock)")]
    Locked(PathBuf),
    #[error("{0}")]
    SharedFiles(String),
}

pub struct RunOptions {
    /// Offsets, dead letters by default, and the lock live here.
    pub data_dir: PathBuf,
    /// Stop each pipeline once its source has nothing more to read.
    pub once: bool,
    /// How often to print a progress line per pipeline.
    pub progress_interval: Duration,
    /// After the shutdown future resolved, how long pipelines have to
    /// commit what they wrote and stop; those still running then are
    /// abandoned and reported as failed (their committed positions are safe).
    pub shutdown_timeout: Duration,
}

/// How one pipeline ended.
#[derive(Debug)]
pub struct PipelineOutcome {
    pub name: String,
    pub error: Option<String>,
    /// Read for the first time, and read again after restarts.
    pub records_in: u64,
    pub replayed: u64,
    pub records_out: u64,
    pub dead_lettered: u64,
    pub retries: u64,
}

/// Runs `pipelines` until `shutdown` resolves (then every pipeline stops
/// reading, commits what it has and ends) or until every pipeline has ended.
pub async fn run(
    pipelines: Vec<PipelineConfig>,
    options: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<Vec<PipelineOutcome>, RunError> {
    let conflicts = config::run_conflicts(&pipelines, &options.data_dir);
    if !conflicts.is_empty() {
        return Err(RunError::SharedFiles(conflicts.join("\n")));
    }
    let _lock = lock_data_dir(&options.data_dir)?;
    let mut fleet = Fleet::new(supervisor::RunContext {
        data_dir: options.data_dir.clone(),
        store: OffsetStore::new(&options.data_dir),
        once: options.once,
    });
    for p in pipelines {
        fleet.start(p);
    }

    let mut progress = Progress::new(fleet.handles.len());
    let mut ticker = tokio::time::interval(options.progress_interval);
    ticker.tick().await; // the first tick is immediate
    tokio::pin!(shutdown);
    // Set once stopping: when the pipelines still running are given up.
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let overdue = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut shutdown, if deadline.is_none() => {
                tracing::info!(
                    "stopping: committing what has been read, then exiting (at most {})",
                    humantime::format_duration(options.shutdown_timeout)
                );
                deadline = Some(tokio::time::Instant::now() + options.shutdown_timeout);
                fleet.stop_all().await;
            }
            _ = overdue => {
                fleet.abandon(options.shutdown_timeout);
                break;
            }
            _ = ticker.tick() => progress.report(&fleet.snapshots()),
            joined = fleet.tasks.join_next_with_id() => match joined {
                None => break,
                Some(joined) => fleet.ended(joined),
            },
        }
    }
    let outcomes = fleet.outcomes();
    progress.report(&fleet.snapshots());
    Ok(outcomes)
}

/// The pipelines of a run, each a task running its supervisor, and how
/// those that ended ended.
struct Fleet {
    context: supervisor::RunContext,
    tasks: JoinSet<Result<(), String>>,
    /// Which pipeline a task runs: a task that panicked comes back as a
    /// JoinError carrying only its task id.
    running: HashMap<tokio::task::Id, String>,
    /// In the order the pipelines were started.
    handles: Vec<PipelineHandle>,
    /// The error of each pipeline that failed.
    errors: HashMap<String, String>,
}

impl Fleet {
    fn new(context: supervisor::RunContext) -> Self {
        Fleet {
            context,
            tasks: JoinSet::new(),
            running: HashMap::new(),
            handles: Vec::new(),
            errors: HashMap::new(),
        }
    }

    fn start(&mut self, p: PipelineConfig) {
        let (handle, supervisor) = supervisor::supervise(Arc::new(p), self.context.clone());
        let task = self.tasks.spawn(supervisor);
        self.running.insert(task.id(), handle.name().to_string());
        self.handles.push(handle);
    }

    /// Asks every pipeline to stop (one that has ended already cannot be
    /// asked).
    async fn stop_all(&self) {
        for handle in &self.handles {
            handle.send(Command::Stop).await;
        }
    }

    /// Gives up the pipelines still running after the shutdown timeout.
    fn abandon(&mut self, timeout: Duration) {
        let mut late: Vec<String> = self.running.values().cloned().collect();
        late.sort();
        for name in late {
            let e = format!(
                "did not stop within the shutdown timeout ({}); abandoned (its committed positions are safe: what it wrote since is read again at the next start)",
                humantime::format_duration(timeout)
            );
            tracing::error!(pipeline = %name, "{e}");
            self.errors.insert(name, e);
        }
        self.tasks.abort_all();
    }

    /// Notes how a pipeline's task ended. The supervisor logged the
    /// pipeline's end; a supervisor that panicked itself is reported here.
    fn ended(
        &mut self,
        joined: Result<(tokio::task::Id, Result<(), String>), tokio::task::JoinError>,
    ) {
        let (id, result) = match joined {
            Ok(ended) => ended,
            Err(e) => {
                let id = e.id();
                let e = format!(
                    "its supervisor panicked: {} (a bug in ferry: please report it)",
                    crate::join_error_message(e)
                );
                let name = self.running.get(&id).map_or("?", |n| n.as_str());
                tracing::error!(pipeline = %name, "pipeline failed: {e}");
                (id, Err(e))
            }
        };
        let name = self.running.remove(&id).unwrap_or_else(|| "?".into());
        if let Err(e) = result {
            self.errors.insert(name, e);
        }
    }

    fn snapshots(&self) -> Vec<crate::supervisor::Snapshot> {
        self.handles.iter().map(PipelineHandle::snapshot).collect()
    }

    fn outcomes(&mut self) -> Vec<PipelineOutcome> {
        self.snapshots()
            .into_iter()
            .map(|s| PipelineOutcome {
                error: self.errors.remove(&s.name),
                name: s.name,
                records_in: s.records_in,
                replayed: s.replayed,
                records_out: s.records_out,
                dead_lettered: s.dead_lettered,
                retries: s.retries,
            })
            .collect()
    }
}

/// Takes `<data-dir>/ferry.lock`: two ferry processes on one data folder
/// would overwrite each other's offsets. The OS drops the lock when the
/// process dies, even by SIGKILL.
pub fn lock_data_dir(dir: &Path) -> Result<File, RunError> {
    let err = |source| RunError::DataDir {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let file = File::create(dir.join("ferry.lock")).map_err(err)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(RunError::Locked(dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(e)) => Err(err(e)),
    }
}

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
    let shared = supervisor::Shared {
        data_dir: options.data_dir.clone(),
        store: OffsetStore::new(&options.data_dir),
        once: options.once,
    };
    let mut tasks = JoinSet::new();
    // Which pipeline a task runs: a task that panicked comes back as a
    // JoinError carrying only its task id.
    let mut running: HashMap<tokio::task::Id, String> = HashMap::new();
    let mut handles: Vec<PipelineHandle> = Vec::new();
    for p in pipelines {
        let (handle, supervisor) = supervisor::supervise(Arc::new(p), shared.clone());
        let task = tasks.spawn(supervisor);
        running.insert(task.id(), handle.name().to_string());
        handles.push(handle);
    }

    let mut progress = Progress::new(handles.len());
    let mut ticker = tokio::time::interval(options.progress_interval);
    ticker.tick().await; // the first tick is immediate
    tokio::pin!(shutdown);
    // Set once stopping: when the pipelines still running are given up.
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut errors: HashMap<String, String> = HashMap::new();
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
                for handle in &handles {
                    // One that has ended already cannot be asked.
                    handle.send(Command::Stop).await;
                }
            }
            _ = overdue => {
                let mut late: Vec<String> = running.values().cloned().collect();
                late.sort();
                for name in late {
                    let e = format!(
                        "did not stop within the shutdown timeout ({}); abandoned (its committed positions are safe: what it wrote since is read again at the next start)",
                        humantime::format_duration(options.shutdown_timeout)
                    );
                    tracing::error!(pipeline = %name, "{e}");
                    errors.insert(name, e);
                }
                tasks.abort_all();
                break;
            }
            _ = ticker.tick() => progress.report(&snapshots(&handles)),
            joined = tasks.join_next_with_id() => match joined {
                None => break,
                Some(joined) => {
                    // The supervisor logged the pipeline's end; a supervisor
                    // that panicked itself is reported here.
                    let (id, result) = match joined {
                        Ok((id, result)) => (id, result),
                        Err(e) => {
                            let id = e.id();
                            let e = format!("its supervisor panicked: {} (a bug in ferry: please report it)", crate::join_error_message(e));
                            tracing::error!(pipeline = %running.get(&id).map_or("?", |n| n.as_str()), "pipeline failed: {e}");
                            (id, Err(e))
                        }
                    };
                    let name = running.remove(&id).unwrap_or_else(|| "?".into());
                    if let Err(e) = result {
                        errors.insert(name, e);
                    }
                }
            },
        }
    }
    let last = snapshots(&handles);
    progress.report(&last);
    Ok(last
        .into_iter()
        .map(|s| PipelineOutcome {
            error: errors.remove(&s.name),
            name: s.name,
            records_in: s.records_in,
            replayed: s.replayed,
            records_out: s.records_out,
            dead_lettered: s.dead_lettered,
            retries: s.retries,
        })
        .collect())
}

fn snapshots(handles: &[PipelineHandle]) -> Vec<crate::supervisor::Snapshot> {
    handles.iter().map(PipelineHandle::snapshot).collect()
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

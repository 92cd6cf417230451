//! # ferry — the runtime
//!
//! ferry moves records from a source to a sink, pipeline by pipeline, with
//! committed positions so that neither a crash nor a restart loses or
//! duplicates a record. This crate is everything around the connectors:
//!
//! * [`config`] loads pipeline files (one YAML file per pipeline), resolves
//!   `${ENV}` references, reports every mistake of a file at once with
//!   file:line:column and key path, and hands each `source:`/`sink:` section
//!   to the connector its `type` names.
//! * [`registry`] is the explicit list of connectors compiled in, one Cargo
//!   feature each.
//! * [`engine`] runs a pipeline as two tokio tasks joined by a bounded
//!   channel. The sink task writes a batch, dead-letters what cannot be
//!   delivered, has the sink commit, and only then moves the committed
//!   positions. Retries, backoff, error tolerance and the dead-letter queue
//!   live here, once, for every connector.
//! * [`offsets`] is the embedded offset store (`<data-dir>/offsets/`), used
//!   when the sink does not keep positions with its data.
//! * [`run`] runs a set of pipelines until a shutdown future resolves —
//!   `main` passes Ctrl-C/SIGTERM, tests pass whatever they like — and
//!   prints one progress line per pipeline every few seconds.
//!
//! ## Why replays are harmless
//!
//! A source replays from the last committed position after a crash. The
//! records between that position and the crash were maybe written, maybe not.
//! A *transactional* sink (the file sink's manifest, later PostgreSQL)
//! committed the positions with the data, so whatever it wrote after them is
//! discarded when it opens; an *idempotent* sink overwrites by id. Either way
//! each record ends up in the destination once. [`delivery_guarantee`] says
//! which case a pipeline is in; `ferry validate` prints it.

pub mod config;
mod dead_letter;
pub mod engine;
pub mod offsets;
pub mod redact;
pub mod registry;

use std::collections::HashMap;
use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ferry_api::{BuildContext, Delivery};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::PipelineConfig;
use crate::engine::{PipelineEnv, Stats, run_pipeline};
use crate::offsets::OffsetStore;

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
    let store = OffsetStore::new(&options.data_dir);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    // Which pipeline a task runs: a task that panicked comes back as a
    // JoinError carrying only its task id.
    let mut names: HashMap<tokio::task::Id, String> = HashMap::new();
    let mut all: Vec<(String, Arc<Stats>)> = Vec::new();
    for p in pipelines {
        let stats = Arc::new(Stats::default());
        all.push((p.name.clone(), stats.clone()));
        let env = PipelineEnv {
            data_dir: options.data_dir.clone(),
            store: store.clone(),
            stats,
            stop: stop_rx.clone(),
            once: options.once,
        };
        let name = p.name.clone();
        let task = tasks.spawn(run_pipeline(Arc::new(p), env));
        names.insert(task.id(), name);
    }

    let mut progress = Progress::new(&all);
    let mut ticker = tokio::time::interval(options.progress_interval);
    ticker.tick().await; // the first tick is immediate
    tokio::pin!(shutdown);
    // Set once stopping: when the pipelines still running are given up.
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut errors: Vec<(String, String)> = Vec::new();
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
                let _ = stop_tx.send(true);
            }
            _ = overdue => {
                let mut late: Vec<String> = names.values().cloned().collect();
                late.sort();
                for name in late {
                    let e = format!(
                        "did not stop within the shutdown timeout ({}); abandoned (its committed positions are safe: what it wrote since is read again at the next start)",
                        humantime::format_duration(options.shutdown_timeout)
                    );
                    tracing::error!(pipeline = %name, "{e}");
                    errors.push((name, e));
                }
                tasks.abort_all();
                break;
            }
            _ = ticker.tick() => progress.report(&all),
            joined = tasks.join_next_with_id() => match joined {
                None => break,
                Some(joined) => {
                    let (id, result) = match joined {
                        Ok((id, result)) => (id, result.map_err(|e| e.to_string())),
                        Err(e) => (e.id(), Err(format!("panicked: {} (a bug in ferry: please report it)", join_error_message(e)))),
                    };
                    let name = names.remove(&id).unwrap_or_else(|| "?".into());
                    match result {
                        Ok(()) => tracing::info!(pipeline = %name, "pipeline stopped"),
                        Err(e) => {
                            tracing::error!(pipeline = %name, "pipeline failed: {e}");
                            errors.push((name, e));
                        }
                    }
                }
            },
        }
    }
    progress.report(&all);
    Ok(all
        .iter()
        .map(|(name, stats)| PipelineOutcome {
            name: name.clone(),
            error: errors
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, e)| e.clone()),
            records_in: stats.records_in.load(Ordering::Relaxed),
            replayed: stats.replayed.load(Ordering::Relaxed),
            records_out: stats.records_out.load(Ordering::Relaxed),
            dead_lettered: stats.dead_lettered.load(Ordering::Relaxed),
            retries: stats.retries.load(Ordering::Relaxed),
        })
        .collect())
}

/// What ended a task: its panic's message, or why it was cancelled.
pub(crate) fn join_error_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(panic) => panic_message(&*panic),
        Err(e) => e.to_string(),
    }
}

/// The message of a panic, from its payload (`panic!` with a literal gives
/// a `&str`, with arguments a `String`).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
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

/// One progress line per pipeline: records in and out, rate, dead letters,
/// committed position.
struct Progress {
    last: Instant,
    last_out: Vec<u64>,
}

impl Progress {
    fn new(all: &[(String, Arc<Stats>)]) -> Progress {
        Progress {
            last: Instant::now(),
            last_out: vec![0; all.len()],
        }
    }

    fn report(&mut self, all: &[(String, Arc<Stats>)]) {
        let secs = self.last.elapsed().as_secs_f64().max(1e-3);
        self.last = Instant::now();
        for (i, (name, s)) in all.iter().enumerate() {
            let out = s.records_out.load(Ordering::Relaxed);
            let rate = (out - self.last_out[i]) as f64 / secs;
            self.last_out[i] = out;
            let replayed = match s.replayed.load(Ordering::Relaxed) {
                0 => String::new(),
                n => format!(" (and {n} read again after restarts)"),
            };
            tracing::info!(
                "{name}: in {}{replayed} out {} ({rate:.0} records/s), dead-lettered {}, retries {}, committed {}",
                s.records_in.load(Ordering::Relaxed),
                out,
                s.dead_lettered.load(Ordering::Relaxed),
                s.retries.load(Ordering::Relaxed),
                s.committed()
            );
        }
    }
}

/// `ferry validate --check-connections`: asks every source and sink to check
/// what it needs (a server that answers, a table that exists),
/// each within 15 seconds. Returns one line per problem, naming the file and
/// pipeline.
pub async fn check_connections(pipelines: &[PipelineConfig]) -> Vec<String> {
    const LIMIT: Duration = Duration::from_secs(15);
    let mut problems = Vec::new();
    // One pipeline after another (source and sink together): a handful of
    // files, and the timeouts bound the wait.
    for p in pipelines {
        let ctx = BuildContext {
            pipeline: p.name.clone(),
            data_dir: PathBuf::from("data"),
            once: false,
            stopping: ferry_api::Stopping::never(),
            writes: Vec::new(),
            retries: ferry_api::Retries::default(),
        };
        let where_ = format!("{}: pipeline {}", p.file.display(), p.name);
        let (source, sink) = tokio::join!(
            tokio::time::timeout(LIMIT, p.source.check(&ctx)),
            tokio::time::timeout(LIMIT, p.sink.check(&ctx))
        );
        for (side, kind, result) in [
            ("source", &p.source_type, source),
            ("sink", &p.sink_type, sink),
        ] {
            match result {
                Ok(Ok(())) => {}
                Ok(Err(e)) => problems.push(format!("{where_}: {side} ({kind}): {e}")),
                Err(_) => problems.push(format!(
                    "{where_}: {side} ({kind}): no answer within {}s",
                    LIMIT.as_secs()
                )),
            }
        }
    }
    problems
}

/// Whether a pipeline is exactly-once, and why, in words for humans.
pub fn delivery_guarantee(p: &PipelineConfig) -> String {
    if !p.source.replayable() {
        return format!(
            "at-least-once: the {} source cannot replay from a position",
            p.source_type
        );
    }
    let guarantee = match p.sink.delivery() {
        Delivery::Transactional => format!(
            "exactly-once: the {} sink commits the source positions together with the data",
            p.sink_type
        ),
        Delivery::Idempotent => format!(
            "exactly-once in effect: the {} sink writes with ids, so a replay overwrites",
            p.sink_type
        ),
        Delivery::AtLeastOnce => {
            return format!(
                "at-least-once: after a crash the {} sink may receive again what it got since the last commit",
                p.sink_type
            );
        }
    };
    let caveats: Vec<&str> = [p.source.delivery_caveat(), p.sink.delivery_caveat()]
        .into_iter()
        .flatten()
        .collect();
    if caveats.is_empty() {
        guarantee
    } else {
        format!("{guarantee}; but {}", caveats.join("; and "))
    }
}

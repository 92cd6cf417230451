//! Runs a set of pipelines, each under its supervisor, until a shutdown
//! future resolves or every pipeline has ended; holds the data folder's
//! lock meanwhile.

use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::api;
use crate::config::{self, PipelineConfig};
use crate::fleet::{self, Fleet};
use crate::offsets::OffsetStore;
use crate::progress::Progress;
use crate::registry::Registry;
use crate::{service_manager, supervisor};

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
    /// Where the pipelines come from again when asked to reload; None: the
    /// pipelines given are all there is.
    pub reload: Option<Reload>,
    /// Serve the admin API.
    pub api: Option<ApiServer>,
}

/// Where the admin API listens, and the token it wants.
pub struct ApiServer {
    pub listener: tokio::net::TcpListener,
    /// Every endpoint but `/health` wants `Authorization: Bearer <token>`.
    pub token: Option<String>,
}

/// Reloading the pipeline files while running.
pub struct Reload {
    /// The files and folders the pipelines were read from.
    pub paths: Vec<PathBuf>,
    pub registry: Arc<Registry>,
    /// Each message asks for a reload (the file watcher, SIGHUP, a test).
    pub requests: mpsc::Receiver<()>,
    /// Go on running when every pipeline has ended (a daemon waiting for
    /// its files to be fixed); else the run ends then, as without reloads.
    pub stay: bool,
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
/// reading, commits what it has and ends) or until every pipeline has ended
/// (unless a [`Reload`] says to stay). With a [`Reload`], each request reads
/// the files again and applies what changed (see [`crate::reload`]).
pub async fn run(
    pipelines: Vec<PipelineConfig>,
    mut options: RunOptions,
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
    let mut reloads = Reloads::new(options.reload.take());
    if reloads.ready {
        service_manager::ready();
    }
    let mut watchdog = service_manager::watchdog_interval().map(tokio::time::interval);
    let mut api_requests = start_api(&mut options);

    let mut progress = Progress::default();
    let mut ticker = tokio::time::interval(options.progress_interval);
    ticker.tick().await; // the first tick is immediate
    // The counters' history, for the rates: one sample a second.
    let mut second = tokio::time::interval(Duration::from_secs(1));
    second.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    // Set once stopping: when the pipelines still running are given up.
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let stay = reloads.stay && deadline.is_none();
        if fleet.tasks.is_empty() && !stay && !fleet.has_pending() {
            break;
        }
        tokio::select! {
            _ = &mut shutdown, if deadline.is_none() => {
                tracing::info!(
                    "stopping: committing what has been read, then exiting (at most {})",
                    humantime::format_duration(options.shutdown_timeout)
                );
                deadline = Some(tokio::time::Instant::now() + options.shutdown_timeout);
                service_manager::stopping();
                fleet.stop_all().await;
            }
            _ = sleep_until(deadline) => {
                fleet.abandon(options.shutdown_timeout);
                break;
            }
            _ = ticker.tick() => progress.report(&fleet.snapshots(), false),
            _ = second.tick() => fleet.sample(),
            _ = tick(watchdog.as_mut()) => service_manager::alive(),
            // (Futures of two fields: both borrow `reloads` at once.)
            request = Reloads::requested(&mut reloads.reload), if deadline.is_none() => {
                reloads.asked(request);
            }
            read = Reloads::read(&mut reloads.reading), if deadline.is_none() => {
                reloads.reading = None;
                fleet.reload(read).await;
                reloads.applied();
            }
            Some(request) = api_requests.recv() => fleet.answer(request),
            joined = fleet.tasks.join_next_with_id(), if !fleet.tasks.is_empty() => {
                if let Some(joined) = joined {
                    fleet.ended(joined).await;
                }
            }
        }
    }
    let outcomes = fleet.outcomes();
    progress.report(&fleet.snapshots(), true);
    Ok(outcomes)
}

type FileReading = tokio::task::JoinHandle<fleet::Files>;

/// The run's side of reloading: the requests, the reading of the files
/// under way (on a thread of its own), and whether another was asked for
/// meanwhile (the files are read again once this reading is applied).
struct Reloads {
    reload: Option<Reload>,
    reading: Option<FileReading>,
    read_again: bool,
    /// Whether the service manager was told the run is ready: at once, or
    /// after the first reading of the files when that is what is queued.
    ready: bool,
    /// Go on running when every pipeline has ended.
    stay: bool,
}

impl Reloads {
    fn new(reload: Option<Reload>) -> Reloads {
        Reloads {
            ready: reload.as_ref().is_none_or(|r| r.requests.is_empty()),
            stay: reload.as_ref().is_some_and(|r| r.stay),
            reload,
            reading: None,
            read_again: false,
        }
    }

    /// The next request (never, without reloads).
    async fn requested(reload: &mut Option<Reload>) -> Option<()> {
        match reload.as_mut() {
            Some(r) => r.requests.recv().await,
            None => std::future::pending().await,
        }
    }

    fn asked(&mut self, request: Option<()>) {
        match request {
            Some(()) if self.reading.is_some() => self.read_again = true,
            Some(()) => {
                if self.ready {
                    service_manager::reloading();
                }
                self.start_reading();
            }
            // Nobody can ask any more (the watcher and the signal handler
            // are gone): the pipelines run on as they are.
            None => self.reload = None,
        }
    }

    fn start_reading(&mut self) {
        if let Some(r) = &self.reload {
            self.reading = Some(fleet::read_files(r.paths.clone(), r.registry.clone()));
        }
    }

    /// The files as read, once the reading under way ends (never, when
    /// none is).
    async fn read(reading: &mut Option<FileReading>) -> fleet::Reading {
        match reading.as_mut() {
            Some(reading) => reading.await,
            None => std::future::pending().await,
        }
    }

    /// The reading was applied: ready again, and read again if asked.
    fn applied(&mut self) {
        service_manager::ready();
        self.ready = true;
        if std::mem::take(&mut self.read_again) && self.reload.is_some() {
            service_manager::reloading();
            self.start_reading();
        }
    }
}

/// Serves the admin API when a listener is given; the run loop answers
/// its requests.
fn start_api(options: &mut RunOptions) -> mpsc::Receiver<api::FleetRequest> {
    let (tx, requests) = mpsc::channel(16);
    if let Some(server) = options.api.take() {
        let config = api::ApiConfig {
            store: OffsetStore::new(&options.data_dir),
            data_dir: options.data_dir.clone(),
            drain_timeout: options.shutdown_timeout,
            token: server.token,
        };
        tokio::spawn(api::serve(server.listener, tx, config));
    }
    requests
}

/// Sleeps until `deadline`; forever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The next tick of `interval`; never without one.
async fn tick(interval: Option<&mut tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
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

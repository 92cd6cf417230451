//! The pipelines of a run: each a task running its supervisor, with what a
//! reload changes in them (see [`crate::reload`]).
//!
//! A pipeline whose definition changed, or whose file is gone, is
//! *drained*: asked to stop (it writes and commits what it read, then
//! closes both ends), and dropped once its task ends. A new definition
//! waits in `pending` until nothing it conflicts with runs any more — its
//! own old definition, or a draining pipeline that writes the same file (a
//! renamed pipeline) — and then starts from the committed positions. So at
//! no moment do two definitions of one pipeline, or two writers of one
//! file, run at once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::{Id, JoinError, JoinSet};

use crate::api::{FleetRequest, Lookup, PipelineView};
use crate::config::{self, PipelineConfig, reload_conflicts};
use crate::redact::redact;
use crate::registry::Registry;
use crate::reload::{self, Change, Found, Running};
use crate::run::PipelineOutcome;
use crate::supervisor::{self, Command, PipelineHandle, Snapshot};

pub(crate) struct Fleet {
    context: supervisor::RunContext,
    pub(crate) tasks: JoinSet<Result<(), String>>,
    /// Which pipeline a task runs: a task that panicked comes back as a
    /// JoinError carrying only its task id.
    running: HashMap<Id, String>,
    /// In the order they were started; ended ones stay (their state is
    /// what the operator sees) until a reload replaces or removes them.
    members: Vec<Member>,
    /// New definitions waiting for what they conflict with to end.
    pending: Vec<PipelineConfig>,
    /// The errors last reported of each invalid file, not repeated by
    /// every reload.
    invalid: HashMap<PathBuf, String>,
}

struct Member {
    config: Arc<PipelineConfig>,
    handle: PipelineHandle,
    /// None once its task ended.
    task: Option<Id>,
    /// Asked to stop for good: dropped once its task ends.
    draining: bool,
    /// How its task ended, when it failed.
    error: Option<String>,
    /// The errors of its file while the file is invalid (it runs on its
    /// previous definition meanwhile).
    pending_error: Option<String>,
}

impl Fleet {
    pub(crate) fn new(context: supervisor::RunContext) -> Self {
        Fleet {
            context,
            tasks: JoinSet::new(),
            running: HashMap::new(),
            members: Vec::new(),
            pending: Vec::new(),
            invalid: HashMap::new(),
        }
    }

    pub(crate) fn start(&mut self, p: PipelineConfig) {
        self.start_shared(Arc::new(p));
    }

    fn start_shared(&mut self, config: Arc<PipelineConfig>) {
        let (handle, supervisor) = supervisor::supervise(config.clone(), self.context.clone());
        let task = self.tasks.spawn(supervisor);
        self.running.insert(task.id(), handle.name().to_string());
        self.members.push(Member {
            config,
            handle,
            task: Some(task.id()),
            draining: false,
            error: None,
            pending_error: None,
        });
    }

    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Asks every pipeline to stop (one that has ended already cannot be
    /// asked); nothing pending starts any more.
    pub(crate) async fn stop_all(&mut self) {
        self.pending.clear();
        for m in &self.members {
            if m.task.is_some() {
                m.handle.send(Command::Stop).await;
            }
        }
    }

    /// Gives up the pipelines still running after the shutdown timeout.
    pub(crate) fn abandon(&mut self, timeout: Duration) {
        let e = format!(
            "did not stop within the shutdown timeout ({}); abandoned (its committed positions are safe: what it wrote since is read again at the next start)",
            humantime::format_duration(timeout)
        );
        for m in self.members.iter_mut().filter(|m| m.task.is_some()) {
            tracing::error!(pipeline = %m.config.name, "{e}");
            m.error = Some(e.clone());
            // Reported as it is, draining or not: it is the run's failure.
            m.draining = false;
        }
        self.tasks.abort_all();
    }

    /// Notes how a pipeline's task ended, drops it if it was draining, and
    /// starts what waited for it. The supervisor logged the pipeline's end;
    /// a supervisor that panicked itself is reported here.
    pub(crate) async fn ended(&mut self, joined: Result<(Id, Result<(), String>), JoinError>) {
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
        self.running.remove(&id);
        if let Some(i) = self.members.iter().position(|m| m.task == Some(id)) {
            let m = &mut self.members[i];
            m.task = None;
            m.error = result.err();
            if m.draining {
                self.members.remove(i);
            }
        }
        self.start_ready();
    }

    /// Reads the pipeline files again and applies what changed.
    /// Applies what a reading of the files ([`read_files`]) found.
    pub(crate) async fn reload(&mut self, read: Reading) {
        let (found, unreadable) = match read {
            Ok(read) => read,
            Err(e) => {
                tracing::error!(
                    "reload: reading the pipeline files failed: {} (a bug in ferry: please report it)",
                    crate::join_error_message(e)
                );
                return;
            }
        };
        let changes = {
            let running: Vec<Running> = self.desired().collect();
            reload::plan(&running, found, &unreadable)
        };
        let seen: Vec<PathBuf> = changes.iter().filter_map(invalid_file).cloned().collect();
        self.invalid.retain(|file, _| seen.contains(file));
        // Removals first: a pipeline renamed in its file may write what the
        // old name wrote, which is no conflict once the old name drains.
        let (removals, others): (Vec<Change>, Vec<Change>) = changes
            .into_iter()
            .partition(|c| matches!(c, Change::Removed { .. }));
        for change in removals.into_iter().chain(others) {
            self.apply(change).await;
        }
        self.start_ready();
    }

    /// [`Fleet::desired_configs`], as the reload plan reads them.
    fn desired(&self) -> impl Iterator<Item = Running<'_>> {
        self.desired_configs().map(|p| Running {
            name: &p.name,
            file: &p.file,
            definition: &p.definition,
        })
    }

    async fn apply(&mut self, change: Change) {
        match change {
            Change::Added(p) => {
                if self.refused(&p) {
                    return;
                }
                tracing::info!(pipeline = %p.name, file = %p.file.display(), "reload: pipeline added");
                self.pending.push(p);
            }
            Change::Changed(p) => {
                if self.refused(&p) {
                    return;
                }
                tracing::info!(pipeline = %p.name, file = %p.file.display(), "reload: pipeline changed: draining the running definition, then starting the new one from the committed positions");
                self.drain(&p.name).await;
                self.pending.retain(|q| q.name != p.name);
                self.pending.push(p);
            }
            Change::Removed { name, why } => {
                tracing::info!(pipeline = %name, "reload: pipeline removed ({why}): draining it, then stopping it; its offsets stay");
                self.pending.retain(|q| q.name != name);
                self.drain(&name).await;
            }
            Change::Invalid {
                file,
                running,
                errors,
            } => {
                let text = errors.to_string();
                if self.first_report(&file, &text) {
                    for e in &errors.0 {
                        tracing::error!("{e}");
                    }
                    match &running {
                        Some(name) => {
                            tracing::error!(pipeline = %name, file = %file.display(), "reload: the file is invalid; the pipeline goes on with its previous definition")
                        }
                        None => {
                            tracing::error!(file = %file.display(), "reload: the file is invalid; no pipeline started from it")
                        }
                    }
                }
                if let Some(m) = running.and_then(|name| self.live_member(&name)) {
                    m.pending_error = Some(text);
                }
            }
            Change::Collides { file, name, other } => {
                let text = format!(
                    "reload: refused: pipeline name {name:?} is already used by {} (names must be unique: offsets are stored under them)",
                    other.display()
                );
                if self.first_report(&file, &text) {
                    tracing::error!(file = %file.display(), "{text}");
                }
            }
            Change::Unchanged { name } => {
                if let Some(m) = self.live_member(&name) {
                    m.pending_error = None;
                }
            }
        }
    }

    /// Notes `text` as what is wrong with `file`: true when it was not the
    /// last thing said of it (so it is said, once, not at every reload).
    fn first_report(&mut self, file: &std::path::Path, text: &str) -> bool {
        let said = self.invalid.get(file).is_some_and(|t| t == text);
        if !said {
            self.invalid.insert(file.to_path_buf(), text.to_string());
        }
        !said
    }

    /// Whether `p` must not run beside the others (they write its files);
    /// says why.
    fn refused(&self, p: &PipelineConfig) -> bool {
        let others: Vec<&PipelineConfig> = self
            .desired_configs()
            .filter(|o| o.name != p.name)
            .collect();
        let problems = reload_conflicts(p, &others, &self.context.data_dir);
        for problem in &problems {
            tracing::error!("reload: refused: {problem}");
        }
        !problems.is_empty()
    }

    /// The newest definition of every pipeline that is to run: pending, or
    /// running (or ended) and not draining.
    fn desired_configs(&self) -> impl Iterator<Item = &PipelineConfig> {
        let members = self
            .members
            .iter()
            .filter(|m| !m.draining && !self.pending.iter().any(|p| p.name == m.config.name))
            .map(|m| m.config.as_ref());
        self.pending.iter().chain(members)
    }

    /// Asks the pipeline `name` to stop for good.
    async fn drain(&mut self, name: &str) {
        let Some(i) = self
            .members
            .iter()
            .position(|m| !m.draining && m.config.name == name)
        else {
            return;
        };
        if self.members[i].task.is_none() {
            self.members.remove(i);
            return;
        }
        self.members[i].draining = true;
        self.members[i].handle.send(Command::Stop).await;
    }

    /// Starts each pending definition that nothing running conflicts with
    /// any more: no draining definition of its own, no draining pipeline
    /// writing its files.
    fn start_ready(&mut self) {
        let mut waiting = Vec::new();
        for p in std::mem::take(&mut self.pending) {
            let draining: Vec<&PipelineConfig> = self
                .members
                .iter()
                .filter(|m| m.draining)
                .map(|m| m.config.as_ref())
                .collect();
            let blocked = draining.iter().any(|d| d.name == p.name)
                || !reload_conflicts(&p, &draining, &self.context.data_dir).is_empty();
            if blocked {
                waiting.push(p);
                continue;
            }
            // An ended definition of the same name (failed, stopped) makes
            // way for the new one.
            self.members.retain(|m| m.config.name != p.name);
            self.start(p);
        }
        self.pending = waiting;
    }

    fn live_member(&mut self, name: &str) -> Option<&mut Member> {
        self.members
            .iter_mut()
            .find(|m| !m.draining && m.config.name == name)
    }

    /// Answers a request of the admin API.
    pub(crate) fn answer(&mut self, request: FleetRequest) {
        // A handler that gave up waiting is no one's loss.
        let _ = match request {
            FleetRequest::List(reply) => reply.send(self.views()).map_err(drop),
            FleetRequest::Live(name, reply) => reply.send(self.lookup(&name)).map_err(drop),
            FleetRequest::Restart(name, reply) => reply.send(self.restart(&name)).map_err(drop),
            FleetRequest::Definition(name, reply) => {
                let config = self.live_member(&name).map(|m| m.config.clone());
                reply.send((self.lookup(&name), config)).map_err(drop)
            }
        };
    }

    /// Every pipeline, as the admin API shows it.
    pub(crate) fn views(&self) -> Vec<PipelineView> {
        self.members
            .iter()
            .filter(|m| !m.draining)
            .map(|m| PipelineView {
                snapshot: m.handle.snapshot(),
                stats: m.handle.stats().clone(),
                file: m.config.file.display().to_string(),
                source: redact(&m.config.source.describe()).into_owned(),
                sink: redact(&m.config.sink.describe()).into_owned(),
                guarantee: crate::delivery_guarantee(&m.config),
                error: m.error.clone(),
                pending_config_error: m.pending_error.clone(),
            })
            .collect()
    }

    /// The pipeline `name`: its handle while it runs.
    pub(crate) fn lookup(&mut self, name: &str) -> Lookup {
        match self.live_member(name) {
            Some(m) if m.task.is_some() => Lookup::Live(m.handle.clone()),
            Some(_) => Lookup::Ended,
            None => Lookup::Unknown,
        }
    }

    /// Restarts `name`: a running pipeline through its supervisor (the
    /// handle is returned for that), an ended one by starting its
    /// definition again.
    pub(crate) fn restart(&mut self, name: &str) -> Lookup {
        let lookup = self.lookup(name);
        if let Lookup::Ended = lookup {
            let i = self
                .members
                .iter()
                .position(|m| !m.draining && m.config.name == name)
                .expect("looked up");
            let m = self.members.remove(i);
            self.start_shared(m.config);
        }
        lookup
    }

    /// Takes each pipeline's sample of this second.
    pub(crate) fn sample(&self) {
        for m in &self.members {
            m.handle.stats().sample();
        }
    }

    pub(crate) fn snapshots(&self) -> Vec<Snapshot> {
        self.members.iter().map(|m| m.handle.snapshot()).collect()
    }

    pub(crate) fn outcomes(&self) -> Vec<PipelineOutcome> {
        self.members
            .iter()
            .map(|m| {
                let s = m.handle.snapshot();
                PipelineOutcome {
                    error: m.error.clone(),
                    name: s.name,
                    records_in: s.records_in,
                    replayed: s.replayed,
                    records_out: s.records_out,
                    dead_lettered: s.dead_lettered,
                    retries: s.retries,
                }
            })
            .collect()
    }
}

/// The file of a change that is reported once, not at every reload.
fn invalid_file(change: &Change) -> Option<&PathBuf> {
    match change {
        Change::Invalid { file, .. } | Change::Collides { file, .. } => Some(file),
        _ => None,
    }
}

/// What a reading of the files found: every pipeline file loaded, and the
/// paths that could not be read this time.
pub(crate) type Reading = Result<Files, JoinError>;
pub(crate) type Files = (Vec<Found>, Vec<PathBuf>);

/// Reads every pipeline file under `paths` on a blocking thread of its own:
/// a read that hangs (a stuck network mount) holds up no one; the run loop
/// applies the result when it comes ([`Fleet::reload`]).
pub(crate) fn read_files(
    paths: Vec<PathBuf>,
    registry: Arc<Registry>,
) -> tokio::task::JoinHandle<Files> {
    tokio::task::spawn_blocking(move || {
        let (files, unreadable) = match config::expand_paths(&paths) {
            Ok(files) => (files, Vec::new()),
            Err(errors) => {
                for e in &errors.0 {
                    tracing::error!("reload: {e}");
                }
                let unreadable = errors.0.into_iter().map(|e| e.file).collect();
                (config::expand_existing(&paths), unreadable)
            }
        };
        let found = files
            .into_iter()
            .map(|file| Found {
                result: config::load_file(&file, &registry),
                file,
            })
            .collect();
        (found, unreadable)
    })
}

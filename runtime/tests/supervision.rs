//! `ferry::run` in process, with connectors written here to misbehave: a
//! panic in a source or a sink is that pipeline's failure, named and with
//! its message, while the other pipelines carry on; a sink that never
//! answers is abandoned at the shutdown timeout.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ferry::config::{DeliveryConfig, ErrorsConfig, PipelineConfig};
use ferry::supervisor::{self, Command, PipelineHandle, State, Status};
use ferry::{PipelineOutcome, RunOptions};
use ferry_api::{
    BuildContext, ConnectorError, Delivery, Partition, Position, Positions, Record, Rejected, Sink,
    SinkConfig, Source, SourceConfig, SourceContext, SourceItem,
};

/// What a test connector does wrong.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    None,
    /// Panics on its third poll (source) or write (sink).
    Panic,
    /// A sink whose writes never return.
    Hang,
    /// A sink whose second write fails, retriably, until 1,500 records
    /// were written (counting what is written again).
    Flaky,
    /// A sink whose second write fails with an error no retry cures.
    Fatal,
    /// A sink whose every write fails, retriably.
    Down,
}

/// `count` records, numbered; replays from its committed position.
#[derive(Debug)]
struct Numbers {
    count: u64,
    fault: Fault,
}

struct NumbersSource {
    next: u64,
    count: u64,
    fault: Fault,
    polls: u32,
    partition: Arc<Partition>,
}

#[async_trait]
impl SourceConfig for Numbers {
    fn describe(&self) -> String {
        "numbers".into()
    }
    async fn build(&self, _: &BuildContext) -> Result<Box<dyn Source>, ConnectorError> {
        Ok(Box::new(NumbersSource {
            next: 0,
            count: self.count,
            fault: self.fault,
            polls: 0,
            partition: Arc::new(Partition::new("numbers")),
        }))
    }
}

#[async_trait]
impl Source for NumbersSource {
    async fn open(
        &mut self,
        committed: &Positions,
        _: &SourceContext,
    ) -> Result<(), ConnectorError> {
        self.next = committed
            .get("numbers")
            .and_then(|p| p.offset.as_u64())
            .unwrap_or(0);
        Ok(())
    }

    async fn poll(&mut self, max: usize) -> Result<Vec<SourceItem>, ConnectorError> {
        self.polls += 1;
        if self.fault == Fault::Panic && self.polls == 3 {
            panic!("source boom at poll {}", self.polls);
        }
        let end = (self.next + max as u64).min(self.count);
        let items = (self.next..end)
            .map(|n| {
                let position = Position {
                    partition: self.partition.clone(),
                    offset: (n + 1).into(),
                };
                SourceItem::Record(Record::new(serde_json::json!({ "n": n }), position))
            })
            .collect();
        self.next = end;
        Ok(items)
    }
}

/// Counts what it is given; positions in the runtime's offset store.
#[derive(Debug)]
struct Counter {
    fault: Fault,
    written: Arc<AtomicU64>,
}

struct CounterSink {
    fault: Fault,
    writes: u32,
    written: Arc<AtomicU64>,
}

#[async_trait]
impl SinkConfig for Counter {
    fn describe(&self) -> String {
        "counter".into()
    }
    fn delivery(&self) -> Delivery {
        Delivery::AtLeastOnce
    }
    async fn build(&self, _: &BuildContext) -> Result<Box<dyn Sink>, ConnectorError> {
        Ok(Box::new(CounterSink {
            fault: self.fault,
            writes: 0,
            written: self.written.clone(),
        }))
    }
}

#[async_trait]
impl Sink for CounterSink {
    async fn open(&mut self) -> Result<Option<Positions>, ConnectorError> {
        Ok(None)
    }
    async fn write(&mut self, batch: &[Record]) -> Result<Vec<Rejected>, ConnectorError> {
        self.writes += 1;
        match self.fault {
            Fault::Panic if self.writes == 3 => panic!("sink boom at write {}", self.writes),
            Fault::Hang => std::future::pending::<()>().await,
            Fault::Flaky if self.writes == 2 && self.written.load(Ordering::Relaxed) < 1_500 => {
                return Err(ConnectorError::Retriable("flaky".into()));
            }
            Fault::Fatal if self.writes == 2 => {
                return Err(ConnectorError::Fatal("the table is gone".into()));
            }
            Fault::Down => return Err(ConnectorError::Retriable("server down".into())),
            _ => {}
        }
        self.written
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        Ok(Vec::new())
    }
    async fn commit(&mut self, _: &Positions) -> Result<(), ConnectorError> {
        Ok(())
    }
}

fn pipeline(
    name: &str,
    count: u64,
    source: Fault,
    sink: Fault,
) -> (PipelineConfig, Arc<AtomicU64>) {
    let written = Arc::new(AtomicU64::new(0));
    let p = PipelineConfig {
        name: name.into(),
        file: PathBuf::from(format!("{name}.yaml")),
        source_type: "numbers".into(),
        source: Box::new(Numbers {
            count,
            fault: source,
        }),
        sink_type: "counter".into(),
        sink: Box::new(Counter {
            fault: sink,
            written: written.clone(),
        }),
        delivery: DeliveryConfig {
            batch_size: 100,
            flush_interval: Duration::from_millis(50),
        },
        errors: ErrorsConfig::default(),
        transforms: Default::default(),
        definition: serde_json::Value::Null,
    };
    (p, written)
}

fn options(dir: &std::path::Path, once: bool, shutdown_timeout: Duration) -> RunOptions {
    RunOptions {
        data_dir: dir.to_path_buf(),
        once,
        progress_interval: Duration::from_secs(60),
        shutdown_timeout,
        reload: None,
        api: None,
    }
}

fn outcome<'a>(outcomes: &'a [PipelineOutcome], name: &str) -> &'a PipelineOutcome {
    outcomes
        .iter()
        .find(|o| o.name == name)
        .expect("every pipeline has an outcome")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_fails_its_own_pipeline_by_name_and_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let (good, good_written) = pipeline("good", 50_000, Fault::None, Fault::None);
    let (bad_source, _) = pipeline("bad-source", 50_000, Fault::Panic, Fault::None);
    let (bad_sink, _) = pipeline("bad-sink", 50_000, Fault::None, Fault::Panic);
    let outcomes = ferry::run(
        vec![good, bad_source, bad_sink],
        options(dir.path(), true, Duration::from_secs(30)),
        std::future::pending(),
    )
    .await
    .unwrap();

    let good = outcome(&outcomes, "good");
    assert_eq!(good.error, None);
    assert_eq!(good_written.load(Ordering::Relaxed), 50_000);
    for (name, message) in [
        ("bad-source", "source boom at poll 3"),
        ("bad-sink", "sink boom at write 3"),
    ] {
        let error = outcome(&outcomes, name).error.clone().unwrap_or_default();
        assert!(
            error.contains("panicked") && error.contains(message),
            "{name}: {error:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_that_does_not_stop_is_abandoned_at_the_shutdown_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (stuck, _) = pipeline("stuck", u64::MAX, Fault::None, Fault::Hang);
    let (fine, fine_written) = pipeline("fine", u64::MAX, Fault::None, Fault::None);
    let stopped_at = Arc::new(Mutex::new(None));
    let shutdown = {
        let stopped_at = stopped_at.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            *stopped_at.lock().unwrap() = Some(Instant::now());
        }
    };
    let outcomes = ferry::run(
        vec![stuck, fine],
        options(dir.path(), false, Duration::from_secs(2)),
        shutdown,
    )
    .await
    .unwrap();
    let took = stopped_at.lock().unwrap().expect("shut down").elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "{took:?}"
    );
    let error = outcome(&outcomes, "stuck")
        .error
        .clone()
        .unwrap_or_default();
    assert!(
        error.contains("did not stop within the shutdown timeout (2s)"),
        "{error}"
    );
    assert_eq!(outcome(&outcomes, "fine").error, None);
    assert!(fine_written.load(Ordering::Relaxed) > 0);
}

/// Restarts read again what the failed attempt had read but not committed:
/// that is counted apart (`replayed`), so `records_in` is each record once
/// (it was 450 for 50 records after a few restarts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_read_again_after_a_restart_are_counted_apart() {
    let dir = tempfile::tempdir().unwrap();
    let (mut flaky, _) = pipeline("flaky", 2_000, Fault::None, Fault::Flaky);
    flaky.errors.retry_backoff = Duration::from_millis(1);
    flaky.errors.retry_backoff_max = Duration::from_millis(5);
    // Commits only at the end of each batch: a failed write loses what
    // the attempt read since.
    flaky.delivery.batch_size = 250;
    flaky.delivery.flush_interval = Duration::from_secs(60);
    let outcomes = ferry::run(
        vec![flaky],
        options(dir.path(), true, Duration::from_secs(30)),
        std::future::pending(),
    )
    .await
    .unwrap();
    let o = outcome(&outcomes, "flaky");
    assert_eq!(o.error, None);
    assert!(o.retries > 0, "{o:?}");
    assert!(o.replayed > 0, "{o:?}");
    assert_eq!(o.records_in, 2_000, "{o:?}");
    assert_eq!(o.records_out, 2_000, "{o:?}");
}

// The supervisor, driven directly: its states, its commands.

fn supervised(p: PipelineConfig, dir: &std::path::Path, once: bool) -> PipelineHandle {
    let context = supervisor::RunContext {
        data_dir: dir.to_path_buf(),
        store: ferry::offsets::OffsetStore::new(dir),
        once,
    };
    let (handle, task) = supervisor::supervise(Arc::new(p), context);
    tokio::spawn(task);
    handle
}

/// Waits (at most 20 s) until the pipeline's status satisfies `what`.
async fn until(handle: &PipelineHandle, what: impl Fn(&Status) -> bool) -> Status {
    let mut watch = handle.watch();
    tokio::time::timeout(Duration::from_secs(20), watch.wait_for(|s| what(s)))
        .await
        .unwrap_or_else(|_| panic!("still {:?}", handle.snapshot().status))
        .expect("the supervisor is alive")
        .clone()
}

/// Every retry of `p` waits exactly `delay`.
fn retry_after(p: &mut PipelineConfig, delay: Duration) {
    p.errors.retry_backoff = delay;
    p.errors.retry_backoff_max = delay;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retriable_failure_is_retrying_with_its_error_then_running_again() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, _) = pipeline("flaky", 2_000, Fault::None, Fault::Flaky);
    retry_after(&mut p, Duration::from_millis(300));
    let handle = supervised(p, dir.path(), true);
    let retrying = until(&handle, |s| matches!(s.state, State::Retrying { .. })).await;
    let State::Retrying {
        error,
        next_attempt,
    } = &retrying.state
    else {
        unreachable!()
    };
    assert!(error.contains("flaky"), "{error}");
    assert!(
        *next_attempt > std::time::SystemTime::now() - Duration::from_secs(1),
        "{retrying:?}"
    );
    let stopped = until(&handle, |s| s.state.is_final()).await;
    assert_eq!(stopped.state, State::Stopped);
    assert!(stopped.restarts >= 1, "{stopped:?}");
    assert!(
        stopped
            .last_error
            .as_ref()
            .is_some_and(|e| e.error.contains("flaky")),
        "{stopped:?}"
    );
    let snapshot = handle.snapshot();
    assert_eq!(snapshot.records_out, 2_000);
    assert!(snapshot.last_commit.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_error_or_a_panic_is_failed_with_its_error() {
    let dir = tempfile::tempdir().unwrap();
    let (fatal, _) = pipeline("fatal", 50_000, Fault::None, Fault::Fatal);
    let (panics, _) = pipeline("panics", 50_000, Fault::None, Fault::Panic);
    let fatal = supervised(fatal, dir.path(), true);
    let panics = supervised(panics, dir.path(), true);
    for (handle, words) in [
        (&fatal, "the table is gone"),
        (&panics, "sink boom at write 3"),
    ] {
        let end = until(handle, |s| s.state.is_final()).await;
        let State::Failed { error } = &end.state else {
            panic!("{}: {end:?}", handle.name());
        };
        assert!(error.contains(words), "{error}");
        assert_eq!(end.restarts, 0, "{end:?}");
    }
    assert!(matches!(
        panics.snapshot().status.state,
        State::Failed { error } if error.contains("panicked")
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_ends_a_pipeline_that_waits_to_retry_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, _) = pipeline("down", 1_000, Fault::None, Fault::Down);
    retry_after(&mut p, Duration::from_secs(600));
    let handle = supervised(p, dir.path(), false);
    until(&handle, |s| matches!(s.state, State::Retrying { .. })).await;
    let asked = Instant::now();
    assert!(handle.send(Command::Stop).await);
    let end = until(&handle, |s| s.state.is_final()).await;
    assert_eq!(end.state, State::Stopped);
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
}

/// A restart asked for drains the attempt (everything read is written and
/// committed) and starts a new one from the committed positions: nothing
/// is read twice, nothing is lost, and it is not counted as a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_drains_and_starts_again_from_the_committed_positions() {
    let dir = tempfile::tempdir().unwrap();
    let (p, written) = pipeline("endless", u64::MAX, Fault::None, Fault::None);
    let handle = supervised(p, dir.path(), false);
    until(&handle, |s| s.state == State::Running).await;
    while written.load(Ordering::Relaxed) < 5_000 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let first_run = handle.snapshot().status.since;
    assert!(handle.send(Command::Restart).await);
    // Running again, in a new attempt (the watch may skip `starting`).
    until(&handle, |s| {
        s.state == State::Running && s.since > first_run
    })
    .await;
    let before = handle.snapshot().records_out;
    while handle.snapshot().records_out < before + 5_000 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(handle.send(Command::Stop).await);
    let end = until(&handle, |s| s.state.is_final()).await;
    assert_eq!(end.state, State::Stopped);
    assert_eq!(end.restarts, 0, "{end:?}");
    let s = handle.snapshot();
    assert_eq!(s.replayed, 0, "{s:?}");
    assert_eq!(s.records_in, written.load(Ordering::Relaxed), "{s:?}");
    assert_eq!(s.records_out, s.records_in, "{s:?}");
    // The store holds exactly what was written.
    let stored = ferry::offsets::OffsetStore::new(dir.path())
        .load("endless")
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.positions.get("numbers").unwrap().offset.as_u64(),
        Some(s.records_out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_drains_commits_and_holds_until_resumed_also_across_supervisors() {
    let dir = tempfile::tempdir().unwrap();
    let (p, written) = pipeline("held", u64::MAX, Fault::None, Fault::None);
    let handle = supervised(p, dir.path(), false);
    until(&handle, |s| s.state == State::Running).await;
    while written.load(Ordering::Relaxed) < 5_000 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(handle.send(Command::Pause).await);
    until(&handle, |s| s.state == State::Paused).await;
    // Drained: everything written is committed, and nothing moves.
    let paused = handle.snapshot();
    assert_eq!(paused.records_out, written.load(Ordering::Relaxed));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(handle.snapshot().records_out, paused.records_out);
    assert!(dir.path().join("paused/held").exists());
    // A stop while paused ends it, still marked paused.
    assert!(handle.send(Command::Stop).await);
    assert_eq!(
        until(&handle, |s| s.state.is_final()).await.state,
        State::Stopped
    );

    // The next supervisor of it (a restart of ferry) starts paused.
    let (p, _) = pipeline("held", u64::MAX, Fault::None, Fault::None);
    let handle = supervised(p, dir.path(), false);
    until(&handle, |s| s.state == State::Paused).await;
    assert_eq!(handle.snapshot().records_out, 0);
    assert!(handle.send(Command::Resume).await);
    until(&handle, |s| s.state == State::Running).await;
    assert!(!dir.path().join("paused/held").exists());
    while handle.snapshot().records_out < 1_000 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(handle.send(Command::Stop).await);
    assert_eq!(
        until(&handle, |s| s.state.is_final()).await.state,
        State::Stopped
    );
    // It went on from the committed position, not from the start.
    let stored = ferry::offsets::OffsetStore::new(dir.path())
        .load("held")
        .unwrap()
        .unwrap();
    let at = stored
        .positions
        .get("numbers")
        .unwrap()
        .offset
        .as_u64()
        .unwrap();
    assert_eq!(at, paused.records_out + handle.snapshot().records_out);
}

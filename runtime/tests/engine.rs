//! The engine in process, driven by scripted connectors: no binary, no
//! service, seconds in all. Each test states one rule of the lifecycle —
//! what is committed and when, what is closed, what a failure restarts —
//! and the script records what the engine did, in order, for the test to
//! read back.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ferry::config::{DeliveryConfig, ErrorsConfig, PipelineConfig, Tolerance};
use ferry::{PipelineOutcome, RunOptions};
use ferry_api::{
    BuildContext, ConnectorError, Delivery, Invalid, Partition, PendingCommit, Position, Positions,
    Raw, Record, Rejected, Sink, SinkConfig, Source, SourceConfig, SourceContext, SourceItem,
};

/// What the connectors saw, in order: `source.open 0`, `sink.write 3`,
/// `sink.durable 5`, `source.committed 5`, `sink.close`, …
#[derive(Debug, Default)]
struct Journal(Mutex<Vec<String>>);

impl Journal {
    fn push(&self, event: String) {
        self.0.lock().unwrap().push(event);
    }
    fn events(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
    fn count(&self, prefix: &str) -> usize {
        self.events()
            .iter()
            .filter(|e| e.starts_with(prefix))
            .count()
    }
    /// The numbers of the events starting with `prefix`.
    fn numbers(&self, prefix: &str) -> Vec<u64> {
        self.events()
            .iter()
            .filter_map(|e| e.strip_prefix(prefix)?.trim().parse().ok())
            .collect()
    }
}

/// Where a scripted connector fails.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
enum Fail {
    #[default]
    Never,
    /// `open` fails (retriably: the pipeline retries; fatally with --once
    /// ending it, see `fatal`).
    Open,
    /// The n-th write of the first life fails, retriably.
    Write(u32),
}

/// `count` numbered records; item `invalid` (if any) is malformed.
#[derive(Debug)]
struct Script {
    count: u64,
    invalid: Option<u64>,
    source_fails: Fail,
    sink_fails: Fail,
    /// Failures are fatal instead of retriable.
    fatal: bool,
    /// Each commit becomes durable this long after it starts.
    commit_delay: Duration,
    /// The source goes quiet after this many records (polls return
    /// nothing) instead of ending.
    quiet_after: Option<u64>,
    journal: Arc<Journal>,
    /// Lives of the sink so far.
    lives: Arc<AtomicU32>,
}

impl Script {
    fn new(count: u64) -> Script {
        Script {
            count,
            invalid: None,
            source_fails: Fail::Never,
            sink_fails: Fail::Never,
            fatal: false,
            commit_delay: Duration::ZERO,
            quiet_after: None,
            journal: Arc::default(),
            lives: Arc::default(),
        }
    }

    fn error(&self, what: &str) -> ConnectorError {
        if self.fatal {
            ConnectorError::Fatal(what.into())
        } else {
            ConnectorError::Retriable(what.into())
        }
    }
}

fn offset(positions: &Positions) -> u64 {
    positions
        .get("n")
        .and_then(|p| p.offset.as_u64())
        .unwrap_or(0)
}

struct ScriptSource {
    next: u64,
    script: Arc<Script>,
    partition: Arc<Partition>,
}

/// The script as a source and as a sink section.
#[derive(Debug)]
struct Scripted(Arc<Script>);

#[async_trait]
impl SourceConfig for Scripted {
    fn describe(&self) -> String {
        "script".into()
    }
    async fn build(&self, _: &BuildContext) -> Result<Box<dyn Source>, ConnectorError> {
        Ok(Box::new(ScriptSource {
            next: 0,
            script: self.0.clone(),
            partition: Arc::new(Partition::new("n")),
        }))
    }
}

#[async_trait]
impl Source for ScriptSource {
    async fn open(
        &mut self,
        committed: &Positions,
        _: &SourceContext,
    ) -> Result<(), ConnectorError> {
        self.next = offset(committed);
        self.script
            .journal
            .push(format!("source.open {}", self.next));
        if self.script.source_fails == Fail::Open {
            return Err(self.script.error("source open"));
        }
        Ok(())
    }

    async fn poll(&mut self, max: usize) -> Result<Vec<SourceItem>, ConnectorError> {
        let end = self.script.quiet_after.unwrap_or(self.script.count);
        if self.next >= end && self.script.quiet_after.is_some() {
            tokio::time::sleep(Duration::from_millis(10)).await;
            return Ok(Vec::new());
        }
        let until = (self.next + max as u64).min(end);
        let items = (self.next..until)
            .map(|n| {
                let position = Position {
                    partition: self.partition.clone(),
                    offset: (n + 1).into(),
                };
                if Some(n) == self.script.invalid {
                    SourceItem::Invalid(Invalid {
                        raw: Raw::Text(format!("bad {n}")),
                        error: "malformed".into(),
                        position,
                    })
                } else {
                    SourceItem::Record(Record::new(serde_json::json!({ "n": n }), position))
                }
            })
            .collect();
        self.next = until;
        Ok(items)
    }

    async fn committed(&mut self, positions: &Positions) -> Result<(), ConnectorError> {
        self.script
            .journal
            .push(format!("source.committed {}", offset(positions)));
        Ok(())
    }

    async fn close(&mut self) {
        self.script.journal.push("source.close".into());
    }
}

struct ScriptSink {
    script: Arc<Script>,
    life: u32,
    writes: u32,
}

#[async_trait]
impl SinkConfig for Scripted {
    fn describe(&self) -> String {
        "script".into()
    }
    fn delivery(&self) -> Delivery {
        Delivery::AtLeastOnce
    }
    async fn build(&self, _: &BuildContext) -> Result<Box<dyn Sink>, ConnectorError> {
        Ok(Box::new(ScriptSink {
            script: self.0.clone(),
            life: self.0.lives.fetch_add(1, Ordering::SeqCst) + 1,
            writes: 0,
        }))
    }
}

#[async_trait]
impl Sink for ScriptSink {
    async fn open(&mut self) -> Result<Option<Positions>, ConnectorError> {
        self.script.journal.push("sink.open".into());
        if self.script.sink_fails == Fail::Open {
            return Err(self.script.error("sink open"));
        }
        Ok(None)
    }

    async fn write(&mut self, batch: &[Record]) -> Result<Vec<Rejected>, ConnectorError> {
        self.writes += 1;
        if self.script.sink_fails == Fail::Write(self.writes) && self.life == 1 {
            return Err(self.script.error("sink write"));
        }
        for r in batch {
            self.script
                .journal
                .push(format!("sink.record {}", r.value["n"]));
        }
        Ok(Vec::new())
    }

    async fn commit(&mut self, _: &Positions) -> Result<(), ConnectorError> {
        unreachable!("start_commit is used")
    }

    async fn start_commit(
        &mut self,
        positions: &Positions,
    ) -> Result<PendingCommit, ConnectorError> {
        let (script, at) = (self.script.clone(), offset(positions));
        script.journal.push(format!("sink.commit {at}"));
        Ok(Box::pin(async move {
            tokio::time::sleep(script.commit_delay).await;
            script.journal.push(format!("sink.durable {at}"));
            Ok(())
        }))
    }

    async fn close(&mut self) {
        self.script.journal.push("sink.close".into());
    }
}

fn pipeline(script: &Arc<Script>, batch_size: usize, tolerance: Tolerance) -> PipelineConfig {
    PipelineConfig {
        name: "script".into(),
        file: PathBuf::from("script.yaml"),
        source_type: "script".into(),
        source: Box::new(Scripted(script.clone())),
        sink_type: "script".into(),
        sink: Box::new(Scripted(script.clone())),
        delivery: DeliveryConfig {
            batch_size,
            flush_interval: Duration::from_millis(20),
        },
        errors: ErrorsConfig {
            tolerance,
            retry_backoff: Duration::from_millis(1),
            retry_backoff_max: Duration::from_millis(5),
            ..ErrorsConfig::default()
        },
        transforms: Default::default(),
        definition: serde_json::Value::Null,
    }
}

/// Runs `p` with `--once` until its source is read, or until `shutdown`.
async fn run_once(
    p: PipelineConfig,
    data: &std::path::Path,
    shutdown: impl Future<Output = ()>,
) -> PipelineOutcome {
    let options = RunOptions {
        data_dir: data.to_path_buf(),
        once: true,
        progress_interval: Duration::from_secs(60),
        shutdown_timeout: Duration::from_secs(10),
        reload: None,
        api: None,
    };
    let mut outcomes = ferry::run(vec![p], options, shutdown).await.unwrap();
    outcomes.pop().expect("one outcome")
}

/// Runs `script` as a pipeline with `--once` in a data folder of its own.
async fn run_script(
    script: Script,
    batch_size: usize,
) -> (Arc<Script>, PipelineOutcome, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let script = Arc::new(script);
    let o = run_once(
        pipeline(&script, batch_size, Tolerance::None),
        dir.path(),
        std::future::pending(),
    )
    .await;
    (script, o, dir)
}

/// Positions reach the source (`committed`) only after the sink said the
/// commit was durable, in order, each past the one before — with commits
/// that take a while, so that writes overlap them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_move_only_past_durable_commits_in_order() {
    let mut script = Script::new(5_000);
    script.commit_delay = Duration::from_millis(15);
    let (script, o, _dir) = run_script(script, 500).await;
    assert_eq!(o.error, None);
    let events = script.journal.events();
    let mut durable = Vec::new();
    let mut last = 0;
    for e in &events {
        if let Some(n) = e.strip_prefix("sink.durable ") {
            durable.push(n.parse::<u64>().unwrap());
        }
        if let Some(n) = e.strip_prefix("source.committed ") {
            let n: u64 = n.parse().unwrap();
            assert!(
                durable.contains(&n),
                "{n} acknowledged before it was durable: {events:?}"
            );
            assert!(n >= last, "acknowledged out of order: {events:?}");
            last = n;
        }
    }
    assert_eq!(last, 5_000, "{events:?}");
    assert!(durable.windows(2).all(|w| w[0] < w[1]), "{durable:?}");
    // Writes went on while a commit was in flight.
    let overlapped = events
        .windows(2)
        .any(|w| w[0].starts_with("sink.commit") && w[1].starts_with("sink.record"));
    assert!(overlapped, "{events:?}");
}

/// `tolerance: none`: the good prefix before a malformed item is written
/// and committed — exactly up to it — and the pipeline stops naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tolerance_none_commits_exactly_the_good_prefix() {
    let mut script = Script::new(1_000);
    script.invalid = Some(637);
    let (script, o, dir) = run_script(script, 100).await;
    let error = o.error.unwrap_or_default();
    assert!(
        error.contains("bad record at") && error.contains("malformed"),
        "{error}"
    );
    assert_eq!(
        script.journal.numbers("sink.record "),
        (0..637).collect::<Vec<_>>()
    );
    assert_eq!(script.journal.numbers("sink.durable ").last(), Some(&637));
    let stored = std::fs::read_to_string(dir.path().join("offsets/script.json")).unwrap();
    let stored: serde_json::Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(stored["positions"]["n"]["offset"], 637, "{stored}");
}

/// A batch that is not full is committed after `flush_interval`, while the
/// source has nothing more to give.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_source_is_flushed_on_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let mut script = Script::new(u64::MAX);
    script.quiet_after = Some(42);
    let script = Arc::new(script);
    let journal = script.journal.clone();
    let flushed = Arc::new(Mutex::new(false));
    let shutdown = {
        let flushed = flushed.clone();
        async move {
            for _ in 0..500 {
                if journal.numbers("sink.durable ").contains(&42) {
                    *flushed.lock().unwrap() = true;
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let mut p = pipeline(&script, 10_000, Tolerance::None);
    p.delivery.flush_interval = Duration::from_millis(50);
    let options = RunOptions {
        data_dir: dir.path().to_path_buf(),
        once: false,
        progress_interval: Duration::from_secs(60),
        shutdown_timeout: Duration::from_secs(10),
        reload: None,
        api: None,
    };
    let outcomes = ferry::run(vec![p], options, shutdown).await.unwrap();
    assert_eq!(outcomes[0].error, None);
    assert!(
        *flushed.lock().unwrap(),
        "42 records never committed before the stop: {:?}",
        script.journal.events()
    );
}

/// A retriable failure of a write starts the pipeline again: the sink and
/// the source of the failed life are closed, and the new source opens at
/// the positions committed before the failure; every record arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retriable_failure_restarts_from_the_committed_positions() {
    let mut script = Script::new(3_000);
    script.sink_fails = Fail::Write(3);
    let (script, o, _dir) = run_script(script, 250).await;
    assert_eq!(o.error, None);
    assert!(o.retries >= 1, "{o:?}");
    let events = script.journal.events();
    let failed_at = events
        .iter()
        .position(|e| e == "sink.close")
        .expect("the first life closed");
    let committed_before = events[..failed_at]
        .iter()
        .filter_map(|e| e.strip_prefix("sink.durable ")?.parse::<u64>().ok())
        .next_back()
        .unwrap_or(0);
    let opens = script.journal.numbers("source.open ");
    assert_eq!(opens.len(), 2, "{events:?}");
    assert_eq!(opens[1], committed_before, "{events:?}");
    assert!(
        events[..failed_at].contains(&"source.close".to_string()),
        "{events:?}"
    );
    let mut seen = script.journal.numbers("sink.record ");
    seen.sort();
    seen.dedup();
    assert_eq!(seen, (0..3_000).collect::<Vec<_>>());
}

/// Whatever was built is closed, on every path: a sink whose `open`
/// failed, a source whose `open` failed (and its sink), an offset store
/// that cannot be read (the sink).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_is_called_on_every_path() {
    // The sink's open fails.
    let mut script = Script::new(10);
    script.sink_fails = Fail::Open;
    script.fatal = true;
    let (script, o, _dir) = run_script(script, 10).await;
    assert!(o.error.is_some());
    assert_eq!(script.journal.events(), ["sink.open", "sink.close"]);

    // The source's open fails.
    let mut script = Script::new(10);
    script.source_fails = Fail::Open;
    script.fatal = true;
    let (script, o, _dir) = run_script(script, 10).await;
    assert!(o.error.is_some());
    assert_eq!(
        script.journal.events(),
        ["sink.open", "source.open 0", "source.close", "sink.close"]
    );

    // The offset store holds something that is not an offsets file.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("offsets")).unwrap();
    std::fs::write(dir.path().join("offsets/script.json"), "not json").unwrap();
    let script = Arc::new(Script::new(10));
    let o = run_once(
        pipeline(&script, 10, Tolerance::None),
        dir.path(),
        std::future::pending(),
    )
    .await;
    let error = o.error.unwrap_or_default();
    assert!(error.contains("not a ferry offsets file"), "{error}");
    assert_eq!(script.journal.events(), ["sink.open", "sink.close"]);
    assert_eq!(script.journal.count("source."), 0);
}

/// The offset store failing to write (here: its temp file's name taken by
/// a folder, as a full disk would fail it) is retried like a connector's
/// trouble — it stopped the pipeline for good — and once it can write
/// again the pipeline finishes, every record committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offset_store_that_cannot_write_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("offsets/script.json.tmp");
    std::fs::create_dir_all(&blocker).unwrap();
    let script = Arc::new(Script::new(1_000));
    let journal = script.journal.clone();
    let unblock = {
        let blocker = blocker.clone();
        async move {
            // Two lives: the first failed on the store.
            while journal.count("source.open") < 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            std::fs::remove_dir(&blocker).unwrap();
            std::future::pending::<()>().await
        }
    };
    let run = run_once(
        pipeline(&script, 100, Tolerance::None),
        dir.path(),
        std::future::pending(),
    );
    let o = tokio::select! {
        o = run => o,
        _ = unblock => unreachable!(),
    };
    assert_eq!(o.error, None, "{:?}", script.journal.events());
    assert!(o.retries >= 1, "{o:?}");
    let stored = std::fs::read_to_string(dir.path().join("offsets/script.json")).unwrap();
    let stored: serde_json::Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(stored["positions"]["n"]["offset"], 1_000, "{stored}");
}

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
use ferry::{PipelineOutcome, RunOptions};
use ferry_api::{
    BuildContext, ConnectorError, Delivery, Partition, Position, Positions, Record, Rejected, Sink,
    SinkConfig, Source, SourceConfig, SourceItem,
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
            partition: Arc::new(Partition {
                key: "numbers".into(),
                info: serde_json::Value::Null,
            }),
        }))
    }
}

#[async_trait]
impl Source for NumbersSource {
    async fn open(&mut self, committed: &Positions) -> Result<(), ConnectorError> {
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
    };
    (p, written)
}

fn options(dir: &std::path::Path, once: bool, shutdown_timeout: Duration) -> RunOptions {
    RunOptions {
        data_dir: dir.to_path_buf(),
        once,
        progress_interval: Duration::from_secs(60),
        shutdown_timeout,
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

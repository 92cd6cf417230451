//! The counters of one pipeline, read by the progress reporter, the admin
//! API and the metrics: atomics and histograms the engine updates, the
//! positions read and committed, and a one-second history for the rates.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use ferry_api::Positions;
use prometheus_client::metrics::histogram::Histogram;

/// How many one-second samples a pipeline keeps: ten minutes, what the
/// status page plots.
pub const HISTORY: usize = 600;

/// Counters of one pipeline. The std mutexes are held only to copy or
/// swap a value, never across an await.
#[derive(Debug)]
pub struct Stats {
    /// Read for the first time in this run.
    pub records_in: AtomicU64,
    /// Read again after a restart (what the failed attempt had read but
    /// not committed): apart from `records_in`, so that it tells the truth.
    pub replayed: AtomicU64,
    pub records_out: AtomicU64,
    /// The size of the records committed, as JSON text (estimated from a
    /// sample for records that hold parsed values).
    pub bytes_out: AtomicU64,
    pub dead_lettered: AtomicU64,
    /// Records a `filter` transform dropped (committed past, not written).
    pub filtered: AtomicU64,
    /// The runtime's restarts and the connectors' own retries
    /// ([`ferry_api::Retries`]).
    pub retries: Arc<AtomicU64>,
    /// How long each commit took to become durable.
    pub commit_seconds: Histogram,
    /// Records (and dead letters) per commit.
    pub batch_records: Histogram,
    committed: Mutex<Committed>,
    /// How far the source has read: past the committed positions by what is
    /// on its way to the sink.
    read: Mutex<Positions>,
    history: Mutex<VecDeque<Sample>>,
    lag: Mutex<Option<crate::lag::LagReport>>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            records_in: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            records_out: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            filtered: AtomicU64::new(0),
            retries: Arc::default(),
            // 1 ms … 32 s: an fsync to a remote transaction.
            commit_seconds: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 16),
            ),
            // 1 … 1,048,576 records.
            batch_records: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(1.0, 4.0, 11),
            ),
            committed: Mutex::default(),
            read: Mutex::default(),
            history: Mutex::default(),
            lag: Mutex::default(),
        }
    }
}

#[derive(Debug, Default)]
struct Committed {
    positions: Positions,
    /// When a commit last became durable in this run.
    at: Option<SystemTime>,
}

/// The counters at one second.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Instant,
    pub records_out: u64,
    pub bytes_out: u64,
}

/// Records and bytes per second over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rate {
    pub records: f64,
    pub bytes: f64,
}

impl Stats {
    /// The committed positions, in words.
    pub fn committed(&self) -> String {
        let positions = self.committed_positions();
        let mut descs: Vec<String> = positions.iter().map(|p| p.describe()).collect();
        match descs.len() {
            0 => "nothing yet".to_string(),
            1..=2 => descs.join(", "),
            n => {
                descs.truncate(2);
                format!("{} and {} more", descs.join(", "), n - 2)
            }
        }
    }

    pub fn committed_positions(&self) -> Positions {
        self.committed
            .lock()
            .expect("not poisoned")
            .positions
            .clone()
    }

    pub fn read_positions(&self) -> Positions {
        self.read.lock().expect("not poisoned").clone()
    }

    /// When a commit last became durable in this run.
    pub fn last_commit(&self) -> Option<SystemTime> {
        self.committed.lock().expect("not poisoned").at
    }

    /// A commit became durable, reaching `positions`.
    pub(super) fn committed_now(&self, positions: &Positions) {
        let mut committed = self.committed.lock().expect("not poisoned");
        committed.positions = positions.clone();
        committed.at = Some(SystemTime::now());
    }

    /// Where the pipeline (re)starts: read and committed so far.
    pub(super) fn set_committed(&self, positions: &Positions) {
        self.committed.lock().expect("not poisoned").positions = positions.clone();
        *self.read.lock().expect("not poisoned") = positions.clone();
    }

    /// The source read up to the end of `chunk`. A chunk that starts and
    /// ends in one partition moves only that one, by its last item: a pass
    /// over every item cost 4% of file → file's time (bench-file
    /// --against). A partition only in the middle of such a chunk is seen
    /// at a later chunk: read positions are for people, nothing depends on
    /// them.
    pub(super) fn read_up_to(&self, chunk: &[ferry_api::SourceItem]) {
        let (Some(first), Some(last)) = (chunk.first(), chunk.last()) else {
            return;
        };
        let mut read = self.read.lock().expect("not poisoned");
        if Arc::ptr_eq(&first.position().partition, &last.position().partition) {
            read.advance(last.position());
        } else {
            read.advance_all(chunk.iter().map(ferry_api::SourceItem::position));
        }
    }

    /// The last measurement of the lag, if any.
    pub fn lag(&self) -> Option<crate::lag::LagReport> {
        self.lag.lock().expect("not poisoned").clone()
    }

    pub(crate) fn set_lag(&self, report: crate::lag::LagReport) {
        *self.lag.lock().expect("not poisoned") = Some(report);
    }

    /// A measurement failed: said beside the last figures.
    pub(crate) fn lag_failed(&self, error: String) {
        let mut lag = self.lag.lock().expect("not poisoned");
        match lag.as_mut() {
            Some(report) => report.error = Some(error),
            None => {
                *lag = Some(crate::lag::LagReport {
                    at: SystemTime::now(),
                    partitions: Vec::new(),
                    error: Some(error),
                })
            }
        }
    }

    /// Takes this second's sample (the run loop calls it once a second).
    pub fn sample(&self) {
        let sample = Sample {
            at: Instant::now(),
            records_out: self.records_out.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
        };
        let mut history = self.history.lock().expect("not poisoned");
        if history.len() == HISTORY {
            history.pop_front();
        }
        history.push_back(sample);
    }

    /// The samples of the last ten minutes, oldest first.
    pub fn history(&self) -> Vec<Sample> {
        self.history
            .lock()
            .expect("not poisoned")
            .iter()
            .copied()
            .collect()
    }

    /// The rate over about the last `seconds` seconds of samples.
    pub fn rate(&self, seconds: usize) -> Rate {
        let history = self.history.lock().expect("not poisoned");
        rate_of(history.iter().rev().take(seconds + 1).copied())
    }
}

/// The rate between the newest and the oldest of `newest_first`.
fn rate_of(mut newest_first: impl Iterator<Item = Sample>) -> Rate {
    let Some(last) = newest_first.next() else {
        return Rate::default();
    };
    let Some(first) = newest_first.last() else {
        return Rate::default();
    };
    let secs = last.at.duration_since(first.at).as_secs_f64();
    if secs <= 0.0 {
        return Rate::default();
    }
    Rate {
        records: last.records_out.saturating_sub(first.records_out) as f64 / secs,
        bytes: last.bytes_out.saturating_sub(first.bytes_out) as f64 / secs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rates_come_from_the_samples_of_the_window() {
        let t = Instant::now();
        let s = |secs: u64, records: u64| Sample {
            at: t + Duration::from_secs(secs),
            records_out: records,
            bytes_out: records * 10,
        };
        let newest_first = [s(3, 400), s(2, 300), s(1, 100), s(0, 100)];
        let r = rate_of(newest_first.into_iter());
        assert!((r.records - 100.0).abs() < 1e-9, "{r:?}");
        assert!((r.bytes - 1000.0).abs() < 1e-9, "{r:?}");
        assert_eq!(rate_of([s(0, 5)].into_iter()), Rate::default());
    }
}

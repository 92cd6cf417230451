//! The counters of one pipeline, read by the progress reporter.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::SystemTime;

use ferry_api::Positions;

/// Counters of one pipeline, read by the progress reporter.
#[derive(Debug, Default)]
pub struct Stats {
    /// Read for the first time in this run.
    pub records_in: AtomicU64,
    /// Read again after a restart (what the failed attempt had read but
    /// not committed): apart from `records_in`, so that it tells the truth.
    pub replayed: AtomicU64,
    pub records_out: AtomicU64,
    pub dead_lettered: AtomicU64,
    /// The runtime's restarts and the connectors' own retries
    /// ([`ferry_api::Retries`]).
    pub retries: Arc<AtomicU64>,
    // A std mutex: held only to swap a short string, never across an await.
    committed: Mutex<Committed>,
}

#[derive(Debug, Default)]
struct Committed {
    /// The committed positions, in words.
    text: String,
    /// When a commit last became durable in this run.
    at: Option<SystemTime>,
}

impl Stats {
    pub fn committed(&self) -> String {
        let text = &self.committed.lock().expect("not poisoned").text;
        // Before the first attempt found its positions.
        if text.is_empty() {
            "nothing yet".to_string()
        } else {
            text.clone()
        }
    }

    /// When a commit last became durable in this run.
    pub fn last_commit(&self) -> Option<SystemTime> {
        self.committed.lock().expect("not poisoned").at
    }

    /// A commit became durable, reaching `positions`.
    pub(super) fn committed_now(&self, positions: &Positions) {
        self.set_committed(positions);
        self.committed.lock().expect("not poisoned").at = Some(SystemTime::now());
    }

    /// Where the pipeline (re)starts.
    pub(super) fn set_committed(&self, positions: &Positions) {
        let mut descs: Vec<String> = positions.iter().map(|p| p.describe()).collect();
        let text = match descs.len() {
            0 => "nothing yet".to_string(),
            1..=2 => descs.join(", "),
            n => {
                descs.truncate(2);
                format!("{} and {} more", descs.join(", "), n - 2)
            }
        };
        self.committed.lock().expect("not poisoned").text = text;
    }
}

//! The progress line: one per pipeline every few seconds, from its
//! counters and state.

use std::time::{Instant, SystemTime};

use crate::supervisor::{Snapshot, State};

/// One progress line per pipeline: records in and out, rate, dead letters,
/// committed position, and the state when it is not `running`.
pub(crate) struct Progress {
    last: Instant,
    last_out: Vec<u64>,
}

impl Progress {
    pub(crate) fn new(pipelines: usize) -> Progress {
        Progress {
            last: Instant::now(),
            last_out: vec![0; pipelines],
        }
    }

    pub(crate) fn report(&mut self, all: &[Snapshot]) {
        let secs = self.last.elapsed().as_secs_f64().max(1e-3);
        self.last = Instant::now();
        for (i, s) in all.iter().enumerate() {
            let out = s.records_out;
            let rate = out.saturating_sub(self.last_out[i]) as f64 / secs;
            self.last_out[i] = out;
            let replayed = match s.replayed {
                0 => String::new(),
                n => format!(" (and {n} read again after restarts)"),
            };
            tracing::info!(
                "{}: in {}{replayed} out {} ({rate:.0} records/s), dead-lettered {}, retries {}, committed {}{}",
                s.name,
                s.records_in,
                out,
                s.dead_lettered,
                s.retries,
                s.committed,
                state_words(&s.status.state),
            );
        }
    }
}

/// Nothing while running; else the state, and what it waits for.
fn state_words(state: &State) -> String {
    match state {
        State::Running => String::new(),
        State::Retrying {
            error,
            next_attempt,
        } => {
            let wait = next_attempt
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            // Whole seconds, rounded up: "in 0s" would read as "now".
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            format!(
                "; retrying in {} after: {error}",
                humantime::format_duration(std::time::Duration::from_secs(secs))
            )
        }
        State::Failed { error } => format!("; failed: {error}"),
        other => format!("; {}", other.name()),
    }
}

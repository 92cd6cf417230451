//! The progress line: one per pipeline every few seconds while it moves,
//! from its counters and state.

use std::collections::HashMap;
use std::time::{Instant, SystemTime};

use crate::supervisor::{Snapshot, State};

/// One progress line per pipeline whose counters or state moved since its
/// last line (an idle daemon stays quiet): records in and out, rate, dead
/// letters, committed position, and the state when it is not `running`.
pub(crate) struct Progress {
    /// What each pipeline's last line said, and when.
    last: HashMap<String, (Said, Instant)>,
    /// The rate of a pipeline's first line is over the time since then.
    began: Instant,
}

impl Default for Progress {
    fn default() -> Progress {
        Progress {
            last: HashMap::new(),
            began: Instant::now(),
        }
    }
}

/// What a line says, to tell whether a new one would say anything new.
#[derive(PartialEq)]
struct Said {
    records_in: u64,
    replayed: u64,
    records_out: u64,
    dead_lettered: u64,
    filtered: u64,
    retries: u64,
    committed: String,
    state: String,
}

impl Progress {
    /// A line for each pipeline that moved; with `every`, for each
    /// pipeline (the last lines, at exit).
    pub(crate) fn report(&mut self, all: &[Snapshot], every: bool) {
        for s in all {
            let said = Said {
                records_in: s.records_in,
                replayed: s.replayed,
                records_out: s.records_out,
                dead_lettered: s.dead_lettered,
                filtered: s.filtered,
                retries: s.retries,
                committed: s.committed.clone(),
                state: state_words(&s.status.state),
            };
            let (out_before, since) = match self.last.get(&s.name) {
                Some((before, _)) if *before == said && !every => continue,
                Some((before, at)) => (before.records_out, *at),
                None => (0, self.began),
            };
            let secs = since.elapsed().as_secs_f64().max(1e-3);
            let rate = s.records_out.saturating_sub(out_before) as f64 / secs;
            let replayed = match s.replayed {
                0 => String::new(),
                n => format!(" (and {n} read again after restarts)"),
            };
            let filtered = match s.filtered {
                0 => String::new(),
                n => format!(", filtered {n}"),
            };
            tracing::info!(
                "{}: in {}{replayed} out {} ({rate:.0} records/s), dead-lettered {}{filtered}, retries {}, committed {}{}",
                s.name,
                s.records_in,
                s.records_out,
                s.dead_lettered,
                s.retries,
                s.committed,
                said.state,
            );
            self.last.insert(s.name.clone(), (said, Instant::now()));
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

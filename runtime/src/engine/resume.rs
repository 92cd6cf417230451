//! Where an attempt starts: the committed positions, and what an operator
//! chose instead (`ferry offsets reset`, the API's offsets DELETE / PUT).
//!
//! When the offset store is the truth, a choice simply replaces what it
//! holds. A sink that keeps its positions (transactional) is another
//! matter: it keeps a position for every partition it was ever given —
//! also for one the choice dropped (a reset drops them all) — and a start
//! must tell a position the sink committed since the choice from one the
//! choice replaced, even when both are the same value (a file read again to
//! the same end). So once an operator has chosen, every commit to such a
//! sink carries one more position, [`CHOICE_MARK`], in the same
//! transaction as the data: the choice's number and the partitions the
//! commit covers. A start then knows exactly:
//! - the sink's mark names the store's latest choice: the sink committed
//!   since; its positions of the partitions the mark lists are the truth,
//!   any other it holds is one the choice dropped;
//! - it names another choice, or none: not committed since; the chosen
//!   positions are the truth.
//!
//! A mark no source makes: Kafka topic names have no `:`, and other
//! sources' keys start with their kind (`file:`, `postgres:`, …).

use std::sync::Arc;

use ferry_api::{Partition, Position, Positions, Value};
use serde_json::json;

use super::{PipelineEnv, PipelineError};
use crate::config::PipelineConfig;

/// The partition key of the mark.
pub(super) const CHOICE_MARK: &str = "ferry:choice";

/// Where an attempt starts, and who holds the truth of it.
pub(super) struct Resume {
    pub positions: Positions,
    /// The sink keeps the positions with its data (the store mirrors them).
    pub kept_by_sink: bool,
    /// The store still says "reset": its first save must be durable.
    pub reset_pending: bool,
    /// The operator's choice every commit to the sink marks, if any.
    pub choice: Option<u64>,
}

/// The committed positions: the sink's when it keeps them, else the
/// store's; what an operator chose, as the module says.
pub(super) fn resume_positions(
    p: &PipelineConfig,
    env: &PipelineEnv,
    from_sink: Option<Positions>,
) -> Result<Resume, PipelineError> {
    let stored = env.store.load(&p.name)?;
    let chosen_note = || tracing::info!(pipeline = %p.name, "starting from the positions an operator chose (offsets reset or set)");
    let Some(mut held) = from_sink else {
        let (positions, reset_pending) =
            stored.map_or_else(Default::default, |s| (s.positions, s.reset));
        if reset_pending {
            chosen_note();
        }
        return Ok(Resume {
            positions,
            kept_by_sink: false,
            reset_pending,
            choice: None,
        });
    };
    let mark = held.remove(CHOICE_MARK).and_then(|m| read_mark(&m.offset));
    let (reset, choice) = stored
        .as_ref()
        .map_or((false, None), |s| (s.reset, s.choice));
    let pending = reset && (choice.is_none() || mark.as_ref().map(|m| m.0) != choice);
    if pending {
        chosen_note();
        return Ok(Resume {
            positions: stored.map(|s| s.positions).unwrap_or_default(),
            kept_by_sink: true,
            reset_pending: true,
            // A choice recorded before choices were numbered gets one.
            choice: Some(choice.unwrap_or_else(|| fastrand::u64(1..))),
        });
    }
    let positions = match &mark {
        Some((_, covered)) => restrict(held, covered),
        None => held,
    };
    Ok(Resume {
        positions,
        kept_by_sink: true,
        reset_pending: false,
        // Marked as long as the sink holds a mark: its list must follow
        // every commit, or a later start would drop what it leaves out.
        choice: choice.or(mark.map(|m| m.0)),
    })
}

/// The sink's positions of the partitions its last commit covered.
fn restrict(held: Positions, covered: &[String]) -> Positions {
    let mut positions = Positions::new();
    for p in held.iter().filter(|p| covered.contains(&p.partition.key)) {
        positions.advance(p);
    }
    positions
}

/// The mark's choice and the partitions it covers.
fn read_mark(offset: &Value) -> Option<(u64, Vec<String>)> {
    let choice = offset.get("choice")?.as_u64()?;
    let covered = offset
        .get("partitions")?
        .as_array()?
        .iter()
        .map(|k| k.as_str().map(str::to_string))
        .collect::<Option<Vec<_>>>()?;
    Some((choice, covered))
}

/// `positions` with the mark of `choice` covering them, for the sink.
pub(super) fn marked(positions: &Positions, choice: u64) -> Positions {
    let covered: Vec<&str> = positions.iter().map(|p| p.partition.key.as_str()).collect();
    let mut out = positions.clone();
    out.advance(&Position {
        partition: Arc::new(Partition::new(CHOICE_MARK)),
        offset: json!({"choice": choice, "partitions": covered}),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(pairs: &[(&str, u64)]) -> Positions {
        let mut p = Positions::new();
        for (key, offset) in pairs {
            p.advance(&Position {
                partition: Arc::new(Partition::new(*key)),
                offset: (*offset).into(),
            });
        }
        p
    }

    #[test]
    fn a_mark_covers_the_commits_partitions_and_reads_back() {
        let m = marked(&at(&[("a", 5), ("b", 7)]), 42);
        let mark = m.get(CHOICE_MARK).unwrap();
        assert_eq!(
            read_mark(&mark.offset),
            Some((42, vec!["a".to_string(), "b".to_string()]))
        );
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn the_sinks_positions_outside_its_last_commit_are_left_out() {
        // `b` was dropped by the choice and not read again since; `a` was
        // read again to the very position it had before.
        let held = at(&[("a", 10), ("b", 7), ("c", 3)]);
        let covered = vec!["a".to_string(), "c".to_string()];
        assert_eq!(restrict(held, &covered), at(&[("a", 10), ("c", 3)]));
    }
}

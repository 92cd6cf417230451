//! Record transforms: the pipeline file's `transforms:` list, applied in
//! order between the source and the sink.
//!
//! A list is validated without I/O when the file is loaded (every problem
//! of every step at once, at its place in the file) and compiled into a
//! [`Chain`] then; the source task has the chain run on each chunk it read,
//! several chunks at once on the blocking pool, handed on in order
//! (`engine/reader.rs`), so the sink's task spends nothing on it. A record
//! a step fails on (a cast that does not fit, a field path through a value
//! that is not an object) is a bad record of stage `transform`, which the
//! writer dead-letters with the record as it came, the step's index and
//! type, or stops on, as the pipeline's tolerance says.
//!
//! A record a `filter` drops is handed on as its position alone: the
//! writer commits past it and writes nothing.
//!
//! A `route` step names the record's destination
//! ([`ferry_api::Record::destination`]); the sink writes it there. A chain
//! that routes into a sink with one destination is refused at load.
//!
//! Files by job: `path.rs` (dotted field paths), `steps.rs` (every step),
//! `lang.rs` (VRL, the language of filter and remap), `time.rs` (time
//! formats).

mod lang;
mod path;
mod steps;
mod time;

use std::collections::BTreeMap;

use ferry_api::{ConfigProblem, PathSegment, Record, Value};
use serde::Deserialize;

use steps::Step;

/// One entry of `transforms:`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(inline)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum TransformConfig {
    /// Renames fields (`{from: to}`, dotted paths); a field that is missing
    /// is no error.
    Rename {
        /// `{old: new}`, dotted paths (`amt: money.amount`).
        fields: BTreeMap<String, String>,
    },
    /// Removes fields (dotted paths).
    Drop {
        /// The fields to remove, dotted paths (`internal.debug`).
        fields: Vec<String>,
    },
    /// Keeps only these fields (dotted paths).
    Keep {
        /// The fields to keep, dotted paths; every other one is removed.
        fields: Vec<String>,
    },
    /// Sets fields to values (`{path: value}`), making the objects on the way.
    Set {
        /// `{path: value}`: any value, as written.
        fields: BTreeMap<String, Value>,
    },
    /// Converts fields to a type; null stays null, a value that does not
    /// convert fails the record.
    Cast {
        /// `{path: type}`: string, integer, float, boolean or timestamp.
        fields: BTreeMap<String, CastTo>,
    },
    /// Nested objects into `a.b` keys.
    Flatten {
        /// What joins the keys (`a.b`).
        #[serde(default = "default_separator")]
        separator: String,
    },
    /// Keeps the records for which the condition (VRL) is true; the others
    /// are dropped, their positions committed all the same.
    Filter {
        /// A VRL expression that gives true or false (`.status != "test"`).
        #[serde(rename = "if")]
        condition: String,
    },
    /// Changes the record with a VRL program (`.total = to_float!(.qty) *
    /// to_float!(.price)`).
    Remap {
        /// The program.
        source: String,
    },
    /// Reads a time from `field` written as `parse`, writes it back as
    /// `format`: `rfc3339`, `unix_s`, `unix_ms`, or a strftime pattern.
    Timestamp {
        /// The field that holds the time (a dotted path).
        field: String,
        /// How it is written: rfc3339, unix_s, unix_ms, or a strftime
        /// pattern (`%Y-%m-%d %H:%M:%S`; no zone: UTC).
        parse: String,
        /// How to write it back (same choices).
        #[serde(default = "default_time_format")]
        format: String,
    },
    /// Sends the record to a destination of the sink — a table, a
    /// collection, a topic or an index — named by one of its fields.
    Route {
        /// The field whose value names the destination (a dotted path; a
        /// string, or a number or boolean as its text).
        field: String,
        /// `{value: destination}`: names the value stands for; a value not
        /// in it takes `default`. Empty: the value is the name.
        #[serde(default)]
        map: BTreeMap<String, String>,
        /// Where a record goes whose field is missing, null, empty or not
        /// in `map`; without it, such a record fails the step.
        #[serde(default)]
        default: Option<String>,
    },
}

fn default_separator() -> String {
    ".".to_string()
}

fn default_time_format() -> String {
    "rfc3339".to_string()
}

/// The types `cast` converts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[schemars(inline)]
#[serde(rename_all = "lowercase")]
pub enum CastTo {
    String,
    Integer,
    Float,
    Boolean,
    /// RFC 3339 text (UTC), from RFC 3339 text or Unix seconds.
    Timestamp,
}

impl CastTo {
    fn name(self) -> &'static str {
        match self {
            CastTo::String => "string",
            CastTo::Integer => "integer",
            CastTo::Float => "float",
            CastTo::Boolean => "boolean",
            CastTo::Timestamp => "timestamp",
        }
    }
}

impl TransformConfig {
    /// The step's `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            TransformConfig::Rename { .. } => "rename",
            TransformConfig::Drop { .. } => "drop",
            TransformConfig::Keep { .. } => "keep",
            TransformConfig::Set { .. } => "set",
            TransformConfig::Cast { .. } => "cast",
            TransformConfig::Flatten { .. } => "flatten",
            TransformConfig::Timestamp { .. } => "timestamp",
            TransformConfig::Filter { .. } => "filter",
            TransformConfig::Remap { .. } => "remap",
            TransformConfig::Route { .. } => "route",
        }
    }
}

/// What is wrong with one step (paths relative to the step).
pub fn problems_of(config: &TransformConfig) -> Vec<ConfigProblem> {
    Step::compile(config).err().unwrap_or_default()
}

/// The steps of a pipeline, ready to run on records.
#[derive(Debug, Default)]
pub struct Chain {
    steps: Vec<(&'static str, Step)>,
}

/// A record the chain could not transform.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The step's index in `transforms:` and its type.
    pub step: usize,
    pub kind: &'static str,
    pub error: String,
}

/// What became of a record.
pub enum Outcome {
    Kept(Record),
    /// A filter dropped it: only its position goes on.
    Dropped(ferry_api::Position),
    /// The record as it came, and why.
    Failed(Record, Failure),
}

impl Chain {
    /// Compiles `transforms:`; the problems' paths start at the step's
    /// index (`[2].fields.amt`).
    pub fn compile(configs: &[TransformConfig]) -> Result<Chain, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let mut steps = Vec::new();
        for (i, c) in configs.iter().enumerate() {
            match Step::compile(c) {
                Ok(step) => steps.push((c.kind(), step)),
                Err(found) => problems.extend(found.into_iter().map(|mut p| {
                    p.path.insert(0, PathSegment::Index(i));
                    p
                })),
            }
        }
        if problems.is_empty() {
            Ok(Chain { steps })
        } else {
            Err(problems)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The index of the first `route` step, if the chain routes records.
    pub fn route_step(&self) -> Option<usize> {
        self.steps
            .iter()
            .position(|(_, step)| matches!(step, Step::Route { .. }))
    }

    /// Runs every step on `record`. A failure gives the record back as it
    /// came, for its dead letter — a panic inside a step too (VRL's
    /// functions call into libraries that may: chrono's formatting of
    /// `%#z`), which fails this record, not the pipeline.
    pub fn apply(&self, record: Record) -> Outcome {
        let kept = record.clone();
        let at = std::cell::Cell::new(0);
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run(record, &at)));
        let (step, error) = match ran {
            Ok(Ok(outcome)) => return outcome,
            Ok(Err(failed)) => failed,
            Err(panic) => (
                at.get(),
                format!(
                    "the step panicked: {} (a bug in ferry or in a library it uses: please report it)",
                    crate::panics::panic_message(&*panic)
                ),
            ),
        };
        Outcome::Failed(
            kept,
            Failure {
                step,
                kind: self.steps[step].0,
                error,
            },
        )
    }

    /// The steps on `record`: what became of it, or the index of the step
    /// that failed and why. `at` follows the step running, for a panic.
    fn run(
        &self,
        mut record: Record,
        at: &std::cell::Cell<usize>,
    ) -> Result<Outcome, (usize, String)> {
        // While programs run one after another, the record stays VRL's
        // value: converted once on the way in and once on the way out.
        let mut in_vrl: Option<lang::VrlTarget> = None;
        // The program that last ran: a value it left that is no JSON is
        // its failure.
        let mut program = 0;
        let mut failed = None;
        for (i, (_, step)) in self.steps.iter().enumerate() {
            at.set(i);
            let applied = if step.is_program() {
                program = i;
                let target =
                    in_vrl.get_or_insert_with(|| lang::target(std::mem::take(&mut *record.value)));
                step.run_vrl(target)
            } else {
                match in_vrl.take().map(|t| lang::to_json(t.value)) {
                    Some(Err(error)) => {
                        failed = Some((program, error));
                        break;
                    }
                    Some(Ok(value)) => *record.value = value,
                    None => {}
                }
                step.apply(&mut record)
            };
            match applied {
                Ok(true) => {}
                Ok(false) => return Ok(Outcome::Dropped(record.position)),
                Err(error) => {
                    failed = Some((i, error));
                    break;
                }
            }
        }
        if failed.is_none()
            && let Some(target) = in_vrl.take()
        {
            match lang::to_json(target.value) {
                Ok(value) => *record.value = value,
                Err(error) => failed = Some((program, error)),
            }
        }
        match failed {
            None => Ok(Outcome::Kept(record)),
            Some(failed) => Err(failed),
        }
    }
}

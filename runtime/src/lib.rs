//! # ferry — the runtime
//!
//! ferry moves records from a source to a sink, pipeline by pipeline, with
//! committed positions so that neither a crash nor a restart loses or
//! duplicates a record. This crate is everything around the connectors:
//!
//! * [`config`] loads pipeline files (one YAML file per pipeline), resolves
//!   `${ENV}` references, reports every mistake of a file at once with
//!   file:line:column and key path, and hands each `source:`/`sink:` section
//!   to the connector its `type` names.
//! * [`registry`] is the explicit list of connectors compiled in, one Cargo
//!   feature each.
//! * [`transform`] compiles a pipeline's `transforms:` (filter and remap in
//!   VRL; rename, drop, keep, set, cast, flatten, timestamp) into a chain the source task runs on
//!   every record; a record a step fails on is a bad record of stage
//!   `transform`.
//! * [`engine`] runs one *attempt* of a pipeline as two tokio tasks joined
//!   by a bounded channel. The sink task writes a batch, dead-letters what
//!   cannot be delivered, has the sink commit, and only then moves the
//!   committed positions. Error tolerance and the dead-letter queue live
//!   here, once, for every connector.
//! * [`supervisor`] owns a pipeline's lifecycle: it runs attempt after
//!   attempt, decides what a retriable error, a fatal one, a panic or a
//!   stop leads to (backoff, failed, stopped), takes [`supervisor::Command`]s
//!   through a channel and publishes the pipeline's [`supervisor::State`]
//!   through a watch.
//! * [`offsets`] is the embedded offset store (`<data-dir>/offsets/`), used
//!   when the sink does not keep positions with its data.
//! * [`run`] supervises a set of pipelines until a shutdown future resolves —
//!   `main` passes Ctrl-C/SIGTERM, tests pass whatever they like — holding
//!   the data folder's lock, and prints one progress line per pipeline every
//!   few seconds (`progress.rs`). Its pipelines are a fleet (`fleet.rs`);
//!   on each reload request (SIGHUP, the file watcher of [`reload::watch`])
//!   the files are read again and [`reload::plan`] says what changed:
//!   changed and removed pipelines are drained before their successors
//!   start.
//! * [`check_connections`] and [`delivery_guarantee`] are what
//!   `ferry validate` adds to the config's own checks; [`schema`] is the
//!   JSON Schema of pipeline files (`ferry schema`), derived from the same
//!   config types the loader reads.
//!
//! ## Why replays are harmless
//!
//! A source replays from the last committed position after a crash. The
//! records between that position and the crash were maybe written, maybe not.
//! A *transactional* sink (the file sink's manifest, later PostgreSQL)
//! committed the positions with the data, so whatever it wrote after them is
//! discarded when it opens; an *idempotent* sink overwrites by id. Either way
//! each record ends up in the destination once. [`delivery_guarantee`] says
//! which case a pipeline is in; `ferry validate` prints it.

pub mod api;
mod check;
pub mod config;
mod dead_letter;
pub mod engine;
mod fleet;
mod guarantee;
pub mod lag;
pub mod offsets;
mod panics;
mod progress;
pub mod redact;
pub mod registry;
pub mod reload;
mod run;
pub mod schema;
mod service_manager;
pub mod supervisor;
pub mod transform;

pub use check::check_connections;
pub use guarantee::delivery_guarantee;
pub(crate) use panics::join_error_message;
pub use panics::panic_message;
pub use run::{ApiServer, PipelineOutcome, Reload, RunError, RunOptions, lock_data_dir, run};

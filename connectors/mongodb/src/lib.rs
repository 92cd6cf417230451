//! # ferry-connector-mongodb — MongoDB sink
//!
//! **Sink** (`type: mongodb`): unordered bulk writes (`insert` / `update`
//! commands) of each batch. Every document's `_id` comes from the record's
//! source position (`id: position`, the default) or a field (`id: {field:
//! name}`), so a replay after a crash overwrites the same documents instead
//! of adding new ones: exactly-once in effect, with positions in ferry's
//! offset store. `id: none` lets the server choose ids: at-least-once.
//!
//! Per-document errors of a bulk write (a unique index on another field, a
//! document too large, validation) come back by index and go through the
//! runtime's error-tolerance path; the other documents of the batch still
//! arrive. Network errors and server restarts are retriable: the runtime
//! restarts the pipeline from its committed positions after a backoff.

mod config;
mod sink;

pub use config::{IdSpec, MongoSinkConfig, WriteMode};

use ferry_api::{SinkPlugin, deserialize};

/// The `mongodb` sink, for the runtime's registry.
pub fn sink_plugin() -> SinkPlugin {
    SinkPlugin {
        kind: "mongodb",
        parse: |v| Ok(Box::new(deserialize::<MongoSinkConfig>(v)?)),
    }
}

//! # ferry-connector-mongodb — MongoDB sink and change-stream source
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
//!
//! **Source** (`type: mongodb`): a change stream on a collection, a
//! database or the server, with the resume token as the position, after an
//! optional initial snapshot whose position makes it resumable (see
//! `source.rs` for why the stream is opened before the snapshot is read).
//! Records carry the operation, the document key and the full document.

mod client;
mod config;
mod sink;
mod source;

pub use config::{FullDocument, MongoSinkConfig, MongoSourceConfig, SnapshotMode, WriteMode};

use ferry_api::{SinkPlugin, SourcePlugin, deserialize, schema_of};

/// The `mongodb` sink, for the runtime's registry.
pub fn sink_plugin() -> SinkPlugin {
    SinkPlugin {
        kind: "mongodb",
        parse: |v| Ok(Box::new(deserialize::<MongoSinkConfig>(v)?)),
        schema: schema_of::<MongoSinkConfig>,
    }
}

/// The `mongodb` change-stream source, for the runtime's registry.
pub fn source_plugin() -> SourcePlugin {
    SourcePlugin {
        kind: "mongodb",
        parse: |v| Ok(Box::new(deserialize::<MongoSourceConfig>(v)?)),
        schema: schema_of::<MongoSourceConfig>,
    }
}

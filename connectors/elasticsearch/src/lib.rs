//! # ferry-connector-elasticsearch — Elasticsearch sink
//!
//! **Sink** (`type: elasticsearch`): each batch becomes `_bulk` requests
//! (`bulk.max_actions`, `bulk.max_bytes`) with explicit `_id`s derived from
//! the record's source position (`id: position`, the default) or a field, so
//! a replay after a crash overwrites the same documents: exactly-once in
//! effect with `action: index` or `update`, and with `create` (a 409 on a
//! position id is the replay finding its own document). `id: none` lets the
//! server choose ids: at-least-once.
//!
//! Every item of every answer is read (see `sink.rs`): refused documents
//! go through the runtime's error-tolerance path with the server's reason;
//! 429s, 5xx and lost connections are sent again with exponential backoff
//! and jitter, then handed to the runtime, which restarts the pipeline from
//! its committed positions. Index names can be templated from the record's
//! timestamp or a field (`index.rs`).

mod config;
mod index;
mod sink;

pub use config::{Action, ElasticsearchSinkConfig};

use ferry_api::{SinkPlugin, deserialize, schema_of};

/// The `elasticsearch` sink, for the runtime's registry.
pub fn sink_plugin() -> SinkPlugin {
    SinkPlugin {
        kind: "elasticsearch",
        parse: |v| Ok(Box::new(deserialize::<ElasticsearchSinkConfig>(v)?)),
        schema: schema_of::<ElasticsearchSinkConfig>,
    }
}

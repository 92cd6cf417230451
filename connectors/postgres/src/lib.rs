//! # ferry-connector-postgres — PostgreSQL source and sink
//!
//! **Sink** (`type: postgres`): exactly-once by transaction. Everything
//! written between two commits goes into one PostgreSQL transaction, streamed
//! with one `COPY … FROM STDIN`: straight into the table for `mode: insert`,
//! and for `mode: upsert` too until a key already exists, then through a
//! temporary staging table and `INSERT … ON CONFLICT (key) DO UPDATE`
//! (keeping the last record of each key; see `sink.rs`). The commit upserts the pipeline's source positions into a ferry offsets table
//! (`ferry_offsets` by default) *in the same transaction*, then `COMMIT`s. On
//! open the sink reads its positions back from there, so after any crash the
//! source resumes exactly after the last committed row — with or without a
//! key.
//!
//! Connection errors and server shutdowns are retriable: the runtime drops
//! the connection (the open transaction rolls back) and replays from the
//! committed positions.
//!
//! **Source** (`type: postgres`): polls a table or a `SELECT` in cursor
//! order — `incrementing` (an id) or `timestamp+incrementing` (the pair
//! compared as a tuple, so rows sharing a timestamp are never skipped). The
//! position is the cursor value. Rows are read only once no transaction still
//! in flight can commit a smaller cursor value (a fence on the transaction
//! snapshot, see `source.rs`), so out-of-order commits are never skipped. Each
//! row becomes a record whose fields are its columns (`row_to_json` types;
//! bytea as base64; timestamps as RFC 3339 in UTC).

mod backlog;
mod column_types;
mod config;
mod copy_text;
mod net;
mod sink;
mod source;
mod sql;

pub use config::{
    Columns, Mode, PostgresSinkConfig, PostgresSinkDefinition, PostgresSourceConfig, SourceMode,
};

use ferry_api::{SinkPlugin, SourcePlugin, deserialize, schema_of};

/// The `postgres` sink, for the runtime's registry.
pub fn sink_plugin() -> SinkPlugin {
    SinkPlugin {
        kind: "postgres",
        parse: |v| {
            Ok(Box::new(PostgresSinkDefinition::from(deserialize::<
                PostgresSinkConfig,
            >(v)?)))
        },
        schema: schema_of::<PostgresSinkConfig>,
    }
}

/// The `postgres` source, for the runtime's registry.
pub fn source_plugin() -> SourcePlugin {
    SourcePlugin {
        kind: "postgres",
        parse: |v| Ok(Box::new(deserialize::<PostgresSourceConfig>(v)?)),
        schema: schema_of::<PostgresSourceConfig>,
    }
}

//! # ferry-connector-postgres — PostgreSQL sink
//!
//! **Sink** (`type: postgres`): exactly-once by transaction. Everything
//! written between two commits goes into one PostgreSQL transaction: each
//! chunk is streamed with `COPY … FROM STDIN` into a temporary staging table
//! and moved into the target with one `INSERT … SELECT` (for `mode: upsert`,
//! `ON CONFLICT (key) DO UPDATE`, keeping the last record of each key). The
//! commit upserts the pipeline's source positions into a ferry offsets table
//! (`ferry_offsets` by default) *in the same transaction*, then `COMMIT`s. On
//! open the sink reads its positions back from there, so after any crash the
//! source resumes exactly after the last committed row — with or without a
//! key.
//!
//! Connection errors and server shutdowns are retriable: the runtime drops
//! the connection (the open transaction rolls back) and replays from the
//! committed positions.

mod config;
mod sink;

pub use config::{Mode, PostgresSinkConfig};

use ferry_api::{SinkPlugin, deserialize};

/// The `postgres` sink, for the runtime's registry.
pub fn sink_plugin() -> SinkPlugin {
    SinkPlugin {
        kind: "postgres",
        parse: |v| Ok(Box::new(deserialize::<PostgresSinkConfig>(v)?)),
    }
}

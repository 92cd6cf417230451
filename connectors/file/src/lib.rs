//! # ferry-connector-file — files in, files out
//!
//! **Source** (`type: file`): follows one file or every file matching a glob,
//! like `tail -F`. A file is identified by its device and inode plus a
//! fingerprint of its first line, not by its name, so a file that is renamed
//! (rotated) keeps its position and a new file under the old name starts at
//! byte 0. Its [`Position`](ferry_api::Position) is the byte offset just past
//! the last complete line; a line without its newline is not read until the
//! newline arrives. New files are noticed through `notify` (inotify on Linux)
//! with a periodic rescan as a safety net.
//!
//! **Sink** (`type: file`): appends records as JSON lines, text or CSV. In its
//! default transactional mode it keeps a manifest beside the output
//! (`<path>.ferry-manifest`) that records, atomically, the committed length of
//! the output and the source positions that length covers. On start it cuts
//! the output back to the committed length, so whatever a crash left half
//! written is rewritten exactly once by the replay. With
//! `transactional: false` it only appends and the runtime's offset store keeps
//! the positions: at-least-once.
//!
//! Formats are shared by both sides: [`Format::Json`] (one object per line),
//! [`Format::Text`] (one line per record), [`Format::Csv`] (a header row, then
//! one record per row; quoted fields may span lines).

mod backlog;
mod config;
mod format;
mod paths;
mod sink;
mod source;

pub use config::{FileSinkConfig, FileSourceConfig, Format};
#[doc(hidden)]
pub use source::read_whole_file;

use ferry_api::{SinkPlugin, SourcePlugin, deserialize, schema_of};

/// The `file` source, for the runtime's registry.
pub fn source_plugin() -> SourcePlugin {
    SourcePlugin {
        kind: "file",
        parse: |v| Ok(Box::new(deserialize::<FileSourceConfig>(v)?)),
        schema: schema_of::<FileSourceConfig>,
    }
}

/// The `file` sink, for the runtime's registry.
pub fn sink_plugin() -> SinkPlugin {
    SinkPlugin {
        kind: "file",
        parse: |v| Ok(Box::new(deserialize::<FileSinkConfig>(v)?)),
        schema: schema_of::<FileSinkConfig>,
    }
}

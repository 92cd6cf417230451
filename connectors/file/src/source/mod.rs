//! The tailing file source.
//!
//! Reading is blocking file I/O, so the state lives in [`Tail`] and each poll
//! moves it onto tokio's blocking pool and back. The async side only waits for
//! a filesystem event or the poll interval when there was nothing to read.//!
//! Files by job: `tail.rs` (the set of followed files: discovery, the
//! round-robin), `tailed.rs` (one followed file: lines, CSV rows, resume,
//! identity); this file is the `Source` and its wake-ups.

mod tail;
mod tailed;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ferry_api::{
    ConnectorError, Invalid, Partition, Position, Positions, Raw, Record, Source, SourceContext,
    SourceItem, Value,
};
use notify::{EventKind, RecursiveMode, Watcher};
use serde_json::json;
use tokio::sync::Notify;

use crate::format::{BOM, CsvHeader, CsvRow, Parsed, parse_line};
use crate::paths::{Glob, watch_root};
use crate::{FileSourceConfig, Format};

use tail::Tail;
use tailed::Tailed;
pub(crate) use tailed::{check_line_start, partition_key};

/// How many leading bytes of a file identify it beside its inode (a new file
/// that reuses a deleted file's inode has, in practice, another first line).
const FINGERPRINT_BYTES: usize = 1024;
/// A file that no longer matches the glob (deleted, or renamed away) is read
/// to its end and then dropped once it has been quiet this long.
const GONE_GRACE: Duration = Duration::from_secs(2);
/// A full rescan of the glob at least this often, in case an event was missed.
const RESCAN_EVERY: Duration = Duration::from_secs(1);

pub(crate) struct FileSource {
    config: FileSourceConfig,
    /// `ferry run --once`: the end of a file is the end of its input.
    once: bool,
    /// The pipeline's own outputs: never read, whatever name leads to them.
    writes: Vec<PathBuf>,
    tail: Option<Tail>,
    wake: Arc<Wake>,
    // Kept alive for its events; dropping it stops the watch.
    _watcher: Option<notify::RecommendedWatcher>,
}

/// Set by the filesystem watcher, read by the poll loop.
struct Wake {
    notify: Notify,
    /// Files may have appeared, disappeared or been renamed: rescan the glob.
    rescan: AtomicBool,
}

impl FileSource {
    pub(crate) fn new(config: FileSourceConfig, once: bool, writes: Vec<PathBuf>) -> Self {
        FileSource {
            config,
            once,
            writes,
            tail: None,
            wake: Arc::new(Wake {
                notify: Notify::new(),
                rescan: AtomicBool::new(true),
            }),
            _watcher: None,
        }
    }

    fn watch(&mut self) {
        let (dir, recursive) = watch_root(&self.config.path);
        let wake = self.wake.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(event) = res {
                if matches!(
                    event.kind,
                    EventKind::Create(_)
                        | EventKind::Remove(_)
                        | EventKind::Modify(notify::event::ModifyKind::Name(_))
                ) {
                    wake.rescan.store(true, Ordering::Relaxed);
                }
                wake.notify.notify_one();
            }
        });
        let mode = if recursive {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        };
        // Without a watcher (a folder that does not exist yet, no inotify
        // instances left) the source still works through the poll interval.
        match watcher.and_then(|mut w| w.watch(&dir, mode).map(|_| w)) {
            Ok(w) => self._watcher = Some(w),
            Err(e) => {
                tracing::debug!(dir = %dir.display(), error = %e, "no file watcher; polling only")
            }
        }
    }

    async fn read(&mut self, max: usize) -> Result<Vec<SourceItem>, ConnectorError> {
        let mut tail = self
            .tail
            .take()
            .ok_or_else(|| ConnectorError::Fatal("file source polled before open".into()))?;
        let rescan = self.wake.rescan.swap(false, Ordering::Relaxed);
        let (tail, result) = tokio::task::spawn_blocking(move || {
            let r = tail.read_batch(max, rescan);
            (tail, r)
        })
        .await
        .map_err(|e| ConnectorError::Fatal(format!("file reader panicked: {e}")))?;
        self.tail = Some(tail);
        result
    }
}

#[async_trait]
impl Source for FileSource {
    async fn open(
        &mut self,
        committed: &Positions,
        _: &SourceContext,
    ) -> Result<(), ConnectorError> {
        self.watch();
        let glob = Glob::new(&self.config.path).map_err(|e| {
            ConnectorError::Fatal(format!("invalid glob {:?}: {e}", self.config.path))
        })?;
        self.tail = Some(Tail {
            glob,
            format: self.config.format,
            max_line_bytes: self.config.max_line_bytes,
            once: self.once,
            writes: self.writes.clone(),
            committed: committed.clone(),
            files: Vec::new(),
            next_scan: Instant::now(),
            next_file: 0,
        });
        Ok(())
    }

    async fn poll(&mut self, max: usize) -> Result<Vec<SourceItem>, ConnectorError> {
        let items = self.read(max).await?;
        if !items.is_empty() {
            return Ok(items);
        }
        tokio::select! {
            _ = self.wake.notify.notified() => {}
            _ = tokio::time::sleep(self.config.poll_interval) => {}
        }
        self.read(max).await
    }
}

/// Reads one file to its end as a `--once` run would, without tokio: every
/// item, in order. For the fuzz targets (`fuzz/`), which check that no
/// content makes the source panic, hang or lose its place.
#[doc(hidden)]
pub fn read_whole_file(
    path: &std::path::Path,
    format: Format,
    max_line_bytes: usize,
) -> Result<Vec<SourceItem>, ConnectorError> {
    let pattern = path
        .to_string_lossy()
        .replace(['*', '?', '[', ']', '{', '}'], "?");
    let mut tail = Tail {
        glob: Glob::new(&pattern)
            .map_err(|e| ConnectorError::Fatal(format!("invalid glob {pattern:?}: {e}")))?,
        format,
        max_line_bytes,
        once: true,
        writes: Vec::new(),
        committed: Positions::new(),
        files: Vec::new(),
        next_scan: Instant::now(),
        next_file: 0,
    };
    let mut all = Vec::new();
    loop {
        let items = tail.read_batch(1000, false)?;
        if items.is_empty() {
            return Ok(all);
        }
        all.extend(items);
    }
}

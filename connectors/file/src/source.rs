//! The tailing file source.
//!
//! Reading is blocking file I/O, so the state lives in [`Tail`] and each poll
//! moves it onto tokio's blocking pool and back. The async side only waits for
//! a filesystem event or the poll interval when there was nothing to read.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ferry_api::{
    ConnectorError, Invalid, Partition, Position, Positions, Record, Source, SourceItem, Value,
};
use notify::{EventKind, RecursiveMode, Watcher};
use serde_json::json;
use tokio::sync::Notify;

use crate::format::{Parsed, csv_row_open, parse_csv_row, parse_line};
use crate::{FileSourceConfig, Format};

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
    pub(crate) fn new(config: FileSourceConfig) -> Self {
        FileSource {
            config,
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
    async fn open(&mut self, committed: &Positions) -> Result<(), ConnectorError> {
        self.watch();
        self.tail = Some(Tail {
            pattern: self.config.path.clone(),
            format: self.config.format,
            max_line_bytes: self.config.max_line_bytes,
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

/// The folder to watch for a path or glob, and whether to watch below it.
fn watch_root(pattern: &str) -> (PathBuf, bool) {
    let mut root = PathBuf::new();
    let mut parts = Path::new(pattern).components().peekable();
    while let Some(part) = parts.next() {
        let s = part.as_os_str().to_string_lossy();
        if s.contains(['*', '?', '[', '{']) {
            // A wildcard in a folder component (not the last) needs a recursive watch.
            return (non_empty(root), parts.peek().is_some());
        }
        if parts.peek().is_none() {
            break; // the file itself: watch its folder
        }
        root.push(part);
    }
    (non_empty(root), false)
}

fn non_empty(p: PathBuf) -> PathBuf {
    if p.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        p
    }
}

/// The blocking state of the source: every followed file.
struct Tail {
    pattern: String,
    format: Format,
    max_line_bytes: usize,
    /// What was committed when the pipeline started: where known files resume.
    committed: Positions,
    files: Vec<Tailed>,
    next_scan: Instant,
    /// Round-robin start, so one busy file cannot starve the others.
    next_file: usize,
}

impl Tail {
    fn read_batch(&mut self, max: usize, rescan: bool) -> Result<Vec<SourceItem>, ConnectorError> {
        if rescan || Instant::now() >= self.next_scan {
            self.scan()?;
            self.next_scan = Instant::now() + RESCAN_EVERY;
        }
        let mut out = Vec::with_capacity(max.min(4096));
        let n = self.files.len();
        for k in 0..n {
            if out.len() >= max {
                break;
            }
            let i = (self.next_file + k) % n;
            let (format, max_line) = (self.format, self.max_line_bytes);
            self.files[i].read_into(&mut out, max, format, max_line)?;
        }
        self.next_file = if n == 0 { 0 } else { (self.next_file + 1) % n };
        self.files.retain(|f| {
            let done = f.at_eof && f.gone_since.is_some_and(|t| t.elapsed() > GONE_GRACE);
            if done {
                tracing::debug!(path = %f.path.display(), "stopped following a file that is gone");
            }
            !done
        });
        Ok(out)
    }

    /// Matches the glob and starts following new files; marks vanished ones.
    fn scan(&mut self) -> Result<(), ConnectorError> {
        let paths = glob::glob(&self.pattern)
            .map_err(|e| ConnectorError::Fatal(format!("invalid glob {:?}: {e}", self.pattern)))?;
        let mut seen = HashSet::new();
        for entry in paths {
            let path = match entry {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read a path matching the glob");
                    continue;
                }
            };
            let meta = match fs::metadata(&path) {
                Ok(m) if m.is_file() => m,
                Ok(_) => continue,
                // Raced with a delete or rename: the next scan sees the truth.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(ConnectorError::io(format!("stat {}", path.display()), e)),
            };
            let id = (meta.dev(), meta.ino());
            seen.insert(id);
            if let Some(f) = self.files.iter_mut().find(|f| f.id == id) {
                f.gone_since = None;
                if f.path != path {
                    tracing::info!(from = %f.path.display(), to = %path.display(), "file renamed; following it under its new name");
                    f.path = path;
                    f.refresh_partition();
                }
                continue;
            }
            match Tailed::open(path.clone(), id, &self.committed, self.format) {
                Ok(f) => self.files.push(f),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(ConnectorError::io(format!("opening {}", path.display()), e)),
            }
        }
        let now = Instant::now();
        for f in &mut self.files {
            if !seen.contains(&f.id) && f.gone_since.is_none() {
                f.gone_since = Some(now);
            }
        }
        Ok(())
    }
}

/// One followed file.
struct Tailed {
    id: (u64, u64),
    path: PathBuf,
    reader: BufReader<File>,
    /// Offset just past the last complete line handed out (or skipped).
    pos: u64,
    /// Bytes after `pos` read so far of a line whose newline has not come yet.
    pending: Vec<u8>,
    /// Bytes of an over-long line already dropped from `pending`.
    dropped: u64,
    /// Hash and length of the first bytes of the file; known once line 1 is complete.
    fingerprint: Option<(u64, usize)>,
    partition: Option<Arc<Partition>>,
    csv_header: Option<Vec<String>>,
    at_eof: bool,
    gone_since: Option<Instant>,
}

impl Tailed {
    /// Opens a newly matched file at its committed position when the
    /// committed partition is this very file, else at byte 0.
    fn open(
        path: PathBuf,
        id: (u64, u64),
        committed: &Positions,
        format: Format,
    ) -> io::Result<Tailed> {
        let file = File::open(&path)?;
        let len = file.metadata()?.len();
        let mut t = Tailed {
            id,
            path,
            reader: BufReader::with_capacity(64 * 1024, file),
            pos: 0,
            pending: Vec::new(),
            dropped: 0,
            fingerprint: None,
            partition: None,
            csv_header: None,
            at_eof: false,
            gone_since: None,
        };
        if let Some(resume) = committed.get(&partition_key(id)) {
            match t.check_resume(resume, len)? {
                Ok(pos) => {
                    if format == Format::Csv {
                        t.csv_header = read_csv_header(t.reader.get_ref())?;
                    }
                    t.reader.seek(SeekFrom::Start(pos))?;
                    t.pos = pos;
                    tracing::info!(path = %t.path.display(), pos, "resuming file");
                }
                Err(why) => {
                    tracing::warn!(path = %t.path.display(), why, "committed position does not fit this file; reading it from the start");
                    t.fingerprint = None;
                }
            }
        } else {
            tracing::info!(path = %t.path.display(), "following new file");
        }
        t.refresh_partition();
        Ok(t)
    }

    /// Whether `resume` belongs to this file's content: Ok(offset) or Err(why not).
    fn check_resume(
        &mut self,
        resume: &Position,
        len: u64,
    ) -> io::Result<Result<u64, &'static str>> {
        let info = &resume.partition.info;
        let (Some(pos), Some(fp), Some(fp_len)) = (
            resume.offset.as_u64(),
            info.get("fp").and_then(Value::as_str),
            info.get("fp_len").and_then(Value::as_u64),
        ) else {
            return Ok(Err("the stored position is not a file position"));
        };
        if pos > len {
            return Ok(Err(
                "the file is shorter than the committed offset (truncated)",
            ));
        }
        let mut head = vec![0u8; fp_len as usize];
        if self.reader.get_ref().read_exact_at(&mut head, 0).is_err() {
            return Ok(Err("the file is shorter than its fingerprint"));
        }
        let hash = fnv1a(&head);
        if format!("{hash:016x}") != fp {
            return Ok(Err(
                "the file's first line changed (inode reused by a new file)",
            ));
        }
        self.fingerprint = Some((hash, head.len()));
        Ok(Ok(pos))
    }

    fn refresh_partition(&mut self) {
        self.partition = self.fingerprint.map(|(hash, len)| {
            Arc::new(Partition {
                key: partition_key(self.id),
                info: json!({
                    "path": self.path.to_string_lossy(),
                    "fp": format!("{hash:016x}"),
                    "fp_len": len,
                }),
            })
        });
    }

    /// Reads complete lines into `out` until it holds `max` items or the
    /// file has nothing complete left.
    fn read_into(
        &mut self,
        out: &mut Vec<SourceItem>,
        max: usize,
        format: Format,
        max_line: usize,
    ) -> Result<(), ConnectorError> {
        // Of an over-long line only this much is kept, for the dead-letter entry.
        let keep = max_line.min(1024);
        while out.len() < max {
            // `take` bounds memory: a line longer than max_line is never held whole.
            let room = if self.dropped > 0 {
                64 * 1024
            } else {
                (max_line + 1).saturating_sub(self.pending.len()).max(1)
            };
            let n = (&mut self.reader)
                .take(room as u64)
                .read_until(b'\n', &mut self.pending)
                .map_err(|e| ConnectorError::io(format!("reading {}", self.path.display()), e))?;
            if n == 0 {
                self.at_eof = true;
                return self.check_truncated();
            }
            self.at_eof = false;
            let has_newline = self.pending.last() == Some(&b'\n');
            let content_len = self.pending.len() - usize::from(has_newline);
            if self.dropped > 0 || content_len > max_line {
                if self.pending.len() > keep {
                    self.dropped += (self.pending.len() - keep) as u64;
                    self.pending.truncate(keep);
                }
                if has_newline {
                    self.emit_line(out, format, max_line);
                }
                continue;
            }
            if has_newline && !(format == Format::Csv && csv_row_open(&self.pending)) {
                self.emit_line(out, format, max_line);
            }
        }
        Ok(())
    }

    fn emit_line(&mut self, out: &mut Vec<SourceItem>, format: Format, max_line: usize) {
        let line_len = self.dropped + self.pending.len() as u64;
        if self.pos == 0 && self.fingerprint.is_none() {
            let head = &self.pending[..self.pending.len().min(FINGERPRINT_BYTES)];
            self.fingerprint = Some((fnv1a(head), head.len()));
            self.refresh_partition();
        }
        self.pos += line_len;
        let position = Position {
            partition: self.partition.clone().expect("set with the fingerprint"),
            offset: Value::from(self.pos),
        };
        if self.dropped > 0 {
            out.push(SourceItem::Invalid(Invalid {
                raw: String::from_utf8_lossy(&self.pending).into_owned(),
                error: format!("line of {line_len} bytes is longer than max_line_bytes ({max_line}); only its start is kept here"),
                position,
            }));
        } else {
            let mut line = &self.pending[..self.pending.len() - 1];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            match parse_line(format, line, &mut self.csv_header) {
                Parsed::Record(v) => out.push(SourceItem::Record(Record::new(v, position))),
                Parsed::Skip => {}
                Parsed::Invalid(error) => out.push(SourceItem::Invalid(Invalid {
                    raw: String::from_utf8_lossy(line).into_owned(),
                    error,
                    position,
                })),
            }
        }
        self.pending.clear();
        self.dropped = 0;
    }

    /// At end of file: if the file is now shorter than what was read, it was
    /// truncated in place (copytruncate rotation): start again from byte 0.
    fn check_truncated(&mut self) -> Result<(), ConnectorError> {
        let len = self
            .reader
            .get_ref()
            .metadata()
            .map_err(|e| ConnectorError::io(format!("stat {}", self.path.display()), e))?
            .len();
        let read = self.pos + self.dropped + self.pending.len() as u64;
        if len < read {
            tracing::warn!(path = %self.path.display(), len, read, "file was truncated; reading it from the start");
            self.reader
                .seek(SeekFrom::Start(0))
                .map_err(|e| ConnectorError::io(format!("seeking {}", self.path.display()), e))?;
            self.pos = 0;
            self.pending.clear();
            self.dropped = 0;
            self.fingerprint = None;
            self.csv_header = None;
            self.refresh_partition();
        }
        Ok(())
    }
}

fn partition_key((dev, ino): (u64, u64)) -> String {
    format!("file:{dev}:{ino}")
}

/// Reads the header row of a CSV file from its start (for a resumed file).
fn read_csv_header(file: &File) -> io::Result<Option<Vec<String>>> {
    let mut reader = BufReader::new(file.try_clone()?);
    reader.seek(SeekFrom::Start(0))?;
    let mut row = Vec::new();
    loop {
        if reader.read_until(b'\n', &mut row)? == 0 || !csv_row_open(&row) {
            break;
        }
    }
    while matches!(row.last(), Some(b'\n' | b'\r')) {
        row.pop();
    }
    Ok(parse_csv_row(&row).ok())
}

/// 64-bit FNV-1a: a stable hash (std's hasher may change between releases,
/// and fingerprints are stored on disk).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn source(path: &str, format: Format) -> FileSource {
        FileSource::new(FileSourceConfig {
            path: path.to_string(),
            format,
            poll_interval: Duration::from_millis(20),
            max_line_bytes: 64,
        })
    }

    fn values(items: &[SourceItem]) -> Vec<String> {
        items
            .iter()
            .map(|i| match i {
                SourceItem::Record(r) => r.value.to_string(),
                SourceItem::Invalid(x) => format!("INVALID {}", x.raw),
            })
            .collect()
    }

    #[test]
    fn watch_roots() {
        assert_eq!(watch_root("/a/b/*.jsonl"), (PathBuf::from("/a/b"), false));
        assert_eq!(watch_root("/a/*/x.jsonl"), (PathBuf::from("/a"), true));
        assert_eq!(watch_root("x.jsonl"), (PathBuf::from("."), false));
        assert_eq!(watch_root("in/x.jsonl"), (PathBuf::from("in"), false));
    }

    #[tokio::test]
    async fn partial_lines_wait_for_their_newline_and_positions_resume() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let mut f = File::create(&path).unwrap();
        f.write_all(b"{\"n\":1}\n{\"n\":2}\n{\"n\"").unwrap();
        let mut src = source(path.to_str().unwrap(), Format::Json);
        src.open(&Positions::new()).await.unwrap();
        let got = src.poll(100).await.unwrap();
        assert_eq!(values(&got), ["{\"n\":1}", "{\"n\":2}"]);
        f.write_all(b":3}\nnot json\n").unwrap();
        let got2 = src.poll(100).await.unwrap();
        assert_eq!(values(&got2), ["{\"n\":3}", "INVALID not json"]);

        // Resume after the second record: the next one is n=3.
        let mut committed = Positions::new();
        committed.advance(got[1].position());
        let mut again = source(path.to_str().unwrap(), Format::Json);
        again.open(&committed).await.unwrap();
        let got3 = again.poll(100).await.unwrap();
        assert_eq!(values(&got3), ["{\"n\":3}", "INVALID not json"]);
    }

    #[tokio::test]
    async fn renamed_file_keeps_position_and_new_file_starts_at_zero() {
        let dir = tempfile::tempdir().unwrap();
        let glob = format!("{}/*.log", dir.path().display());
        let a = dir.path().join("app.log");
        fs::write(&a, "one\ntwo\n").unwrap();
        let mut src = source(&glob, Format::Text);
        src.open(&Positions::new()).await.unwrap();
        let got = src.poll(100).await.unwrap();
        assert_eq!(values(&got), ["\"one\"", "\"two\""]);
        let mut committed = Positions::new();
        committed.advance(got[1].position());

        // Rotate: rename away (still matching), write more to the old file, new file.
        fs::rename(&a, dir.path().join("app-1.log")).unwrap();
        let mut old = fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("app-1.log"))
            .unwrap();
        old.write_all(b"three\n").unwrap();
        fs::write(&a, "fresh\n").unwrap();

        // A restarted source resumes the renamed file after "two".
        let mut again = source(&glob, Format::Text);
        again.open(&committed).await.unwrap();
        let mut all = Vec::new();
        for _ in 0..3 {
            all.extend(values(&again.poll(100).await.unwrap()));
        }
        all.sort();
        assert_eq!(all, ["\"fresh\"", "\"three\""]);
    }

    #[tokio::test]
    async fn long_lines_are_invalid_and_truncation_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.txt");
        let long = "x".repeat(200);
        fs::write(&path, format!("short\n{long}\nafter\n")).unwrap();
        let mut src = source(path.to_str().unwrap(), Format::Text);
        src.open(&Positions::new()).await.unwrap();
        let got = src.poll(100).await.unwrap();
        assert_eq!(got.len(), 3);
        assert!(
            matches!(&got[1], SourceItem::Invalid(i) if i.error.contains("longer than max_line_bytes"))
        );
        assert_eq!(got[2].position().offset, Value::from(6 + 201 + 6));

        fs::write(&path, "new\n").unwrap(); // truncate in place
        let mut after = Vec::new();
        for _ in 0..3 {
            after.extend(values(&src.poll(100).await.unwrap()));
        }
        assert_eq!(after, ["\"new\""]);
    }
}

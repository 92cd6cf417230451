//! The tailing file source.
//!
//! Reading is blocking file I/O, so the state lives in [`Tail`] and each poll
//! moves it onto tokio's blocking pool and back. The async side only waits for
//! a filesystem event or the poll interval when there was nothing to read.

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
    ConnectorError, Invalid, Partition, Position, Positions, Raw, Record, Source, SourceItem, Value,
};
use notify::{EventKind, RecursiveMode, Watcher};
use serde_json::json;
use tokio::sync::Notify;

use crate::format::{BOM, CsvHeader, CsvRow, Parsed, parse_line};
use crate::paths::{Glob, watch_root};
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
    async fn open(&mut self, committed: &Positions) -> Result<(), ConnectorError> {
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

/// The blocking state of the source: every followed file.
struct Tail {
    glob: Glob,
    format: Format,
    max_line_bytes: usize,
    once: bool,
    writes: Vec<PathBuf>,
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
            let (format, max_line, once) = (self.format, self.max_line_bytes, self.once);
            self.files[i].read_into(&mut out, max, format, max_line, once)?;
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
        let mut seen = HashSet::new();
        // The pipeline's own outputs by device and inode: a symbolic link,
        // a hard link or another spelling of the path leads to the same.
        let own: Vec<((u64, u64), &PathBuf)> = self
            .writes
            .iter()
            .filter_map(|w| fs::metadata(w).ok().map(|m| ((m.dev(), m.ino()), w)))
            .collect();
        for path in self.glob.matches() {
            let meta = match fs::metadata(&path) {
                Ok(m) if m.is_file() => m,
                Ok(_) => continue,
                // Raced with a delete or rename: the next scan sees the truth.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(ConnectorError::io(format!("stat {}", path.display()), e)),
            };
            let id = (meta.dev(), meta.ino());
            if let Some((_, written)) = own.iter().find(|(o, _)| *o == id) {
                return Err(ConnectorError::Fatal(format!(
                    "the source's path matches {}, which is {} written by this pipeline: it \
                     would read its own output back forever; change the source's path or the \
                     output's",
                    path.display(),
                    written.display()
                )));
            }
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
            match Tailed::open(
                path.clone(),
                id,
                &self.committed,
                self.format,
                self.max_line_bytes,
            ) {
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
    /// Bytes after `pos` read so far of a line whose newline has not come yet
    /// (for CSV: of a row, which may span lines inside a quoted field).
    pending: Vec<u8>,
    /// Bytes of an over-long line already dropped from `pending`.
    dropped: u64,
    /// Hash and length of the first bytes of the file; known once line 1 is complete.
    fingerprint: Option<(u64, usize)>,
    partition: Option<Arc<Partition>>,
    csv_header: CsvHeader,
    /// CSV: where the row in `pending` stands (inside a quoted field or
    /// not), fed piece by piece as it grows.
    csv_row: CsvRow,
    /// CSV: the length of the first line of `pending` once a row has gone on
    /// past it inside a quoted field. Should the field never close, only
    /// this line is lost: it becomes a bad record, and reading resumes
    /// right after it.
    first_newline: Option<usize>,
    /// `--once`: the length of an unterminated last line already warned about.
    warned_unterminated: Option<usize>,
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
        max_line: usize,
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
            csv_header: CsvHeader::Unread,
            csv_row: CsvRow::default(),
            first_newline: None,
            warned_unterminated: None,
            at_eof: false,
            gone_since: None,
        };
        if let Some(resume) = committed.get(&partition_key(id)) {
            match t.check_resume(resume, len)? {
                Ok(pos) => {
                    if format == Format::Csv {
                        t.csv_header = read_csv_header(t.reader.get_ref(), max_line)?;
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
        // A stored position is outside data too (an edited offsets file):
        // a fingerprint longer than ferry makes, or than the file, is not
        // this file's.
        if fp_len > FINGERPRINT_BYTES as u64 || fp_len > len {
            return Ok(Err("the stored fingerprint does not fit this file"));
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
        once: bool,
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
            let before = self.pending.len();
            let n = (&mut self.reader)
                .take(room as u64)
                .read_until(b'\n', &mut self.pending)
                .map_err(|e| ConnectorError::io(format!("reading {}", self.path.display()), e))?;
            if n == 0 {
                self.at_eof = true;
                if once && self.end_of_input(out, format)? {
                    continue;
                }
                return self.check_truncated();
            }
            self.at_eof = false;
            let has_newline = self.pending.last() == Some(&b'\n');
            let content_len = self.pending.len() - usize::from(has_newline);
            if format == Format::Csv && self.dropped == 0 {
                self.csv_row.feed(&self.pending[before..]);
                if self.first_newline.is_some() && content_len > max_line {
                    let why = format!("does not close within max_line_bytes ({max_line})");
                    self.cut_open_row(out, format, &why)?;
                    continue;
                }
            }
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
            if !has_newline {
                continue;
            }
            if format == Format::Csv && self.csv_row.open() {
                self.first_newline.get_or_insert(self.pending.len());
            } else {
                self.emit_line(out, format, max_line);
            }
        }
        Ok(())
    }

    /// `--once` at the end of the file: what is left unfinished will not be
    /// finished. A CSV row inside a quoted field that never closed costs
    /// only its first line (true: read on after it); a last line without its
    /// newline stays unread, and is named once.
    fn end_of_input(
        &mut self,
        out: &mut Vec<SourceItem>,
        format: Format,
    ) -> Result<bool, ConnectorError> {
        if self.first_newline.is_some() {
            self.cut_open_row(out, format, "never closes before the end of the file")?;
            return Ok(true);
        }
        let left = self.pending.len() + self.dropped as usize;
        if left > 0 && self.warned_unterminated != Some(left) {
            self.warned_unterminated = Some(left);
            tracing::warn!(
                path = %self.path.display(),
                bytes = left,
                offset = self.pos,
                "the file ends with {left} bytes that have no line ending: they are not read \
                 (the committed position stays before them, so a later run reads them once \
                 the line is complete)"
            );
        }
        Ok(false)
    }

    /// Moves past `len` bytes of the file: the position of what they held.
    fn advance(&mut self, len: u64) -> Position {
        if self.pos == 0 && self.fingerprint.is_none() {
            let head = &self.pending[..self.pending.len().min(FINGERPRINT_BYTES)];
            self.fingerprint = Some((fnv1a(head), head.len()));
            self.refresh_partition();
        }
        self.pos += len;
        Position {
            partition: self.partition.clone().expect("set with the fingerprint"),
            offset: Value::from(self.pos),
        }
    }

    /// A CSV row whose quoted field does not close: its first line becomes a
    /// bad record, and reading starts again right after that line, so the
    /// rows below are read as rows.
    fn cut_open_row(
        &mut self,
        out: &mut Vec<SourceItem>,
        format: Format,
        why: &str,
    ) -> Result<(), ConnectorError> {
        let first = self
            .first_newline
            .take()
            .expect("a row past its first line");
        let line = line_content(&self.pending[..first - 1], self.pos == 0);
        let raw = Raw::of(line);
        let error =
            format!("a quoted CSV field opened on this line {why}; only this line is skipped");
        self.refuse_header(format, &error);
        let position = self.advance(first as u64);
        out.push(SourceItem::Invalid(Invalid {
            raw,
            error,
            position,
        }));
        self.clear_pending();
        self.reader
            .seek(SeekFrom::Start(self.pos))
            .map_err(|e| ConnectorError::io(format!("seeking {}", self.path.display()), e))?;
        Ok(())
    }

    fn emit_line(&mut self, out: &mut Vec<SourceItem>, format: Format, max_line: usize) {
        let line_len = self.dropped + self.pending.len() as u64;
        let at_start = self.pos == 0;
        let position = self.advance(line_len);
        if self.dropped > 0 {
            let error = format!(
                "line of {line_len} bytes is longer than max_line_bytes ({max_line}); only its start is kept here"
            );
            self.refuse_header(format, &error);
            out.push(SourceItem::Invalid(Invalid {
                raw: Raw::of(&self.pending),
                error,
                position,
            }));
        } else {
            let line = line_content(&self.pending[..self.pending.len() - 1], at_start);
            match parse_line(format, line, &mut self.csv_header) {
                Parsed::Record(v) => out.push(SourceItem::Record(Record::new(v, position))),
                Parsed::Skip => {}
                Parsed::Invalid(error) => out.push(SourceItem::Invalid(Invalid {
                    raw: Raw::of(line),
                    error,
                    position,
                })),
            }
        }
        self.clear_pending();
    }

    /// Nothing of the next line or row read yet.
    fn clear_pending(&mut self) {
        self.pending.clear();
        self.dropped = 0;
        self.csv_row = CsvRow::default();
        self.first_newline = None;
        self.warned_unterminated = None;
    }

    /// The line that was to be the CSV header is a bad record: without its
    /// header no row of the file can be read, and the next row must not
    /// take its place.
    fn refuse_header(&mut self, format: Format, error: &str) {
        if format == Format::Csv && matches!(self.csv_header, CsvHeader::Unread) {
            self.csv_header = CsvHeader::Bad(format!("header row: {error}"));
        }
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
            self.clear_pending();
            self.fingerprint = None;
            self.csv_header = CsvHeader::Unread;
            self.refresh_partition();
        }
        Ok(())
    }
}

/// A line without its newline, carriage return and (at the start of the
/// file) byte-order mark.
fn line_content(line: &[u8], at_start: bool) -> &[u8] {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if at_start {
        line.strip_prefix(BOM).unwrap_or(line)
    } else {
        line
    }
}

fn partition_key((dev, ino): (u64, u64)) -> String {
    format!("file:{dev}:{ino}")
}

/// Reads the header row of a CSV file from its start (for a resumed file).
fn read_csv_header(file: &File, max_line: usize) -> io::Result<CsvHeader> {
    let mut reader = BufReader::new(file.try_clone()?);
    reader.seek(SeekFrom::Start(0))?;
    let mut row = Vec::new();
    let mut state = CsvRow::default();
    loop {
        let before = row.len();
        let n = (&mut reader)
            .take((max_line + 1) as u64)
            .read_until(b'\n', &mut row)?;
        state.feed(&row[before..]);
        if row.len() > max_line + 1 || (row.len() > max_line && row.last() != Some(&b'\n')) {
            // The first run refused this header as longer than max_line_bytes.
            return Ok(CsvHeader::Bad(
                "header row longer than max_line_bytes".into(),
            ));
        }
        if !state.open() {
            break;
        }
        if n == 0 {
            // The first run cut this header row as a field that never closed.
            return Ok(CsvHeader::Bad(
                "header row: a quoted CSV field opened on it does not close".into(),
            ));
        }
    }
    while matches!(row.last(), Some(b'\n' | b'\r')) {
        row.pop();
    }
    let row = row.strip_prefix(BOM).unwrap_or(&row);
    // Parsed as the first run did: the same verdict on the same header.
    let mut header = CsvHeader::Unread;
    parse_line(Format::Csv, row, &mut header);
    Ok(header)
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
        FileSource::new(
            FileSourceConfig {
                path: path.to_string(),
                format,
                poll_interval: Duration::from_millis(20),
                max_line_bytes: 64,
            },
            false,
            Vec::new(),
        )
    }

    fn source_once(path: &str, format: Format, once: bool) -> FileSource {
        let mut s = source(path, format);
        s.once = once;
        s
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

    #[tokio::test]
    async fn an_unclosed_csv_quote_costs_only_its_line_at_the_end_of_input() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.csv");
        fs::write(&path, "id,v\n1,a\n2,\"oops\n3,c\n4,d\n").unwrap();
        let mut src = source_once(path.to_str().unwrap(), Format::Csv, true);
        src.open(&Positions::new()).await.unwrap();
        let got = src.poll(100).await.unwrap();
        assert_eq!(
            values(&got),
            [
                r#"{"id":"1","v":"a"}"#,
                "INVALID 2,\"oops",
                r#"{"id":"3","v":"c"}"#,
                r#"{"id":"4","v":"d"}"#
            ]
        );
        // The bad record's position is just past its own line.
        assert_eq!(got[1].position().offset, Value::from(5 + 4 + 8));
        let SourceItem::Invalid(bad) = &got[1] else {
            unreachable!()
        };
        assert!(bad.error.contains("never closes"), "{}", bad.error);
    }

    #[tokio::test]
    async fn an_unclosed_csv_quote_costs_only_its_line_when_the_row_grows_too_long() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.csv");
        // max_line_bytes is 64: the open row passes it after a few rows.
        let mut text = String::from("id,v\n1,a\n2,\"oops\n");
        for n in 3..40 {
            text.push_str(&format!("{n},x\n"));
        }
        fs::write(&path, &text).unwrap();
        let mut src = source_once(path.to_str().unwrap(), Format::Csv, false);
        src.open(&Positions::new()).await.unwrap();
        let mut got = Vec::new();
        for _ in 0..3 {
            got.extend(src.poll(100).await.unwrap());
        }
        let v = values(&got);
        assert_eq!(v[0], r#"{"id":"1","v":"a"}"#);
        assert!(v[1].starts_with("INVALID 2,\"oops"), "{}", v[1]);
        assert_eq!(
            v.len(),
            2 + 37,
            "every row after the bad line is read: {v:?}"
        );
        assert_eq!(v[38], r#"{"id":"39","v":"x"}"#);
    }

    #[tokio::test]
    async fn an_unterminated_last_line_stays_unread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        fs::write(&path, "{\"n\":1}\n{\"n\":2}").unwrap();
        let mut src = source_once(path.to_str().unwrap(), Format::Json, true);
        src.open(&Positions::new()).await.unwrap();
        let got = src.poll(100).await.unwrap();
        assert_eq!(values(&got), ["{\"n\":1}"]);
        assert!(src.poll(100).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_byte_order_mark_is_not_part_of_the_first_record() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("a.jsonl");
        fs::write(&json, "\u{feff}{\"n\":1}\n{\"n\":2}\n").unwrap();
        let mut src = source(json.to_str().unwrap(), Format::Json);
        src.open(&Positions::new()).await.unwrap();
        assert_eq!(
            values(&src.poll(100).await.unwrap()),
            ["{\"n\":1}", "{\"n\":2}"]
        );

        let csv = dir.path().join("a.csv");
        fs::write(&csv, "\u{feff}id,v\n1,a\n").unwrap();
        let mut src = source(csv.to_str().unwrap(), Format::Csv);
        src.open(&Positions::new()).await.unwrap();
        let got = src.poll(100).await.unwrap();
        assert_eq!(values(&got), [r#"{"id":"1","v":"a"}"#]);
        // A resumed file reads its header the same way.
        let mut committed = Positions::new();
        committed.advance(got[0].position());
        fs::OpenOptions::new()
            .append(true)
            .open(&csv)
            .unwrap()
            .write_all(b"2,b\n")
            .unwrap();
        let mut again = source(csv.to_str().unwrap(), Format::Csv);
        again.open(&committed).await.unwrap();
        assert_eq!(
            values(&again.poll(100).await.unwrap()),
            [r#"{"id":"2","v":"b"}"#]
        );
    }

    #[tokio::test]
    async fn a_quote_inside_an_unquoted_csv_field_is_a_plain_character() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.csv");
        fs::write(&path, "id,h\n1,5'10\"\n2,a\n3,b\n4,6'1\"\n5,c\n").unwrap();
        let mut src = source_once(path.to_str().unwrap(), Format::Csv, true);
        src.open(&Positions::new()).await.unwrap();
        let got = src.poll(100).await.unwrap();
        // Compared as values: key order depends on serde_json's features.
        let got: Vec<Value> = got
            .iter()
            .map(|i| match i {
                SourceItem::Record(r) => (*r.value).clone(),
                SourceItem::Invalid(x) => panic!("a bad record: {x:?}"),
            })
            .collect();
        let h = ["5'10\"", "a", "b", "6'1\"", "c"];
        let want: Vec<Value> = h
            .iter()
            .enumerate()
            .map(|(i, h)| json!({"id": (i + 1).to_string(), "h": h}))
            .collect();
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn a_csv_header_longer_than_max_line_bytes_is_not_replaced_by_the_first_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.csv");
        let header = format!("{},v\n", "x".repeat(80));
        fs::write(&path, format!("{header}1,a\n2,b\n")).unwrap();
        let mut src = source_once(path.to_str().unwrap(), Format::Csv, true);
        src.open(&Positions::new()).await.unwrap();
        let got = src.poll(100).await.unwrap();
        assert_eq!(got.len(), 3);
        for item in &got {
            assert!(matches!(item, SourceItem::Invalid(_)), "{item:?}");
        }
        // Resumed after row 1: the header is refused the same way.
        let mut committed = Positions::new();
        committed.advance(got[1].position());
        let mut again = source_once(path.to_str().unwrap(), Format::Csv, true);
        again.open(&committed).await.unwrap();
        let rest = again.poll(100).await.unwrap();
        assert_eq!(rest.len(), 1);
        assert!(
            matches!(&rest[0], SourceItem::Invalid(i) if i.error.contains("header")),
            "{rest:?}"
        );
    }
}
